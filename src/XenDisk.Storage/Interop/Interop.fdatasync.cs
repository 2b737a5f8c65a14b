using System.Runtime.InteropServices;

namespace XenDisk.Storage.Interop;

internal static partial class Libc
{
    /// <summary>int fdatasync(int fd);</summary>
    [LibraryImport(LibraryName, EntryPoint = "fdatasync", SetLastError = true)]
    internal static partial int fdatasync(int fd);
}
