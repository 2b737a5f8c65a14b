using System.Runtime.InteropServices;

namespace XenDisk.Xen.Simulated.Interop;

internal static partial class Libc
{
    /// <summary>int close(int fd);</summary>
    [LibraryImport(LibraryName, EntryPoint = "close", SetLastError = true)]
    public static partial int close(int fd);
}
