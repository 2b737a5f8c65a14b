using System.Runtime.InteropServices;

namespace XenDisk.Storage.Interop;

internal static partial class Libc
{
    /// <summary>ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset);</summary>
    [LibraryImport(LibraryName, EntryPoint = "pwritev", SetLastError = true)]
    internal static unsafe partial nint pwritev(int fd, Iovec* iov, int iovcnt, long offset);
}
