using System.Runtime.InteropServices;

namespace XenDisk.Storage.Interop;

internal static partial class Libc
{
    /// <summary>int ftruncate(int fd, off_t length);</summary>
    [LibraryImport(LibraryName, EntryPoint = "ftruncate", SetLastError = true)]
    internal static partial int ftruncate(int fd, long length);
}
