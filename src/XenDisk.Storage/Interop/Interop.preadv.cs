using System.Runtime.InteropServices;

namespace XenDisk.Storage.Interop;

/// <summary>struct iovec { void *iov_base; size_t iov_len; }</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct Iovec
{
    public nint iov_base;
    public nuint iov_len;
}

internal static partial class Libc
{
    /// <summary>Most iovecs one preadv/pwritev call accepts (UIO_MAXIOV, limits.h IOV_MAX).</summary>
    internal const int IOV_MAX = 1024;

    /// <summary>ssize_t preadv(int fd, const struct iovec *iov, int iovcnt, off_t offset);</summary>
    [LibraryImport(LibraryName, EntryPoint = "preadv", SetLastError = true)]
    internal static unsafe partial nint preadv(int fd, Iovec* iov, int iovcnt, long offset);
}
