using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class Libc
    {
        // ssize_t read(int fd, void *buf, size_t count); -1 + errno on failure.
        [LibraryImport(Libraries.Libc, SetLastError = true)]
        internal static unsafe partial nint read(int fd, void* buf, nuint count);

        // ssize_t write(int fd, const void *buf, size_t count); -1 + errno on failure.
        [LibraryImport(Libraries.Libc, SetLastError = true)]
        internal static unsafe partial nint write(int fd, void* buf, nuint count);
    }
}
