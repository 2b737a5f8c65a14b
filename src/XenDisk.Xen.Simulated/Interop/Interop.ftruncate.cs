using System.Runtime.InteropServices;

namespace XenDisk.Xen.Simulated.Interop;

internal static partial class Libc
{
    /// <summary>int ftruncate(int fd, off_t length); off_t is 64-bit on every 64-bit Linux.</summary>
    [LibraryImport(LibraryName, EntryPoint = "ftruncate", SetLastError = true)]
    public static partial int ftruncate(int fd, long length);
}
