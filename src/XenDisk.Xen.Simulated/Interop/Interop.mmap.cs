using System.Runtime.InteropServices;

namespace XenDisk.Xen.Simulated.Interop;

internal static partial class Libc
{
    /// <summary>void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset);</summary>
    [LibraryImport(LibraryName, EntryPoint = "mmap", SetLastError = true)]
    public static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);
}
