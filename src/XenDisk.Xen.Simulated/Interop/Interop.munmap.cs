using System.Runtime.InteropServices;

namespace XenDisk.Xen.Simulated.Interop;

internal static partial class Libc
{
    /// <summary>int munmap(void *addr, size_t length);</summary>
    [LibraryImport(LibraryName, EntryPoint = "munmap", SetLastError = true)]
    public static partial int munmap(nint addr, nuint length);
}
