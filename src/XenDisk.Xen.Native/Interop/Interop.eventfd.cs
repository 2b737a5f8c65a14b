using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class Libc
    {
        // eventfd(2) flags: EFD_CLOEXEC == O_CLOEXEC, EFD_NONBLOCK == O_NONBLOCK (x86 and arm64 values).
        internal const int EFD_CLOEXEC = 0x80000;
        internal const int EFD_NONBLOCK = 0x800;

        // int eventfd(unsigned int initval, int flags); -1 + errno on failure.
        [LibraryImport(Libraries.Libc, SetLastError = true)]
        internal static partial int eventfd(uint initval, int flags);
    }
}
