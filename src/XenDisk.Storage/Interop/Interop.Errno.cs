namespace XenDisk.Storage.Interop;

/// <summary>The errno values raw storage distinguishes (asm-generic/errno-base.h, errno.h).</summary>
internal static class Errno
{
    internal const int EPERM = 1;
    internal const int ENOENT = 2;
    internal const int EINTR = 4;
    internal const int EIO = 5;
    internal const int ENXIO = 6;
    internal const int EBADF = 9;
    internal const int EAGAIN = 11;
    internal const int EACCES = 13;
    internal const int EFAULT = 14;
    internal const int EBUSY = 16;
    internal const int ENOTDIR = 20;
    internal const int EISDIR = 21;
    internal const int EINVAL = 22;
    internal const int ENOSPC = 28;
    internal const int EROFS = 30;
    internal const int ENOTTY = 25;
    internal const int EOPNOTSUPP = 95;
    internal const int EDQUOT = 122;

    /// <summary>How an I/O errno reaches the data plane: a result, never an exception.</summary>
    internal static XenDisk.Storage.IoStatus ToIoStatus(int errno) => errno switch
    {
        ENOSPC or EDQUOT => XenDisk.Storage.IoStatus.NoSpace,
        EROFS => XenDisk.Storage.IoStatus.ReadOnly,
        EOPNOTSUPP => XenDisk.Storage.IoStatus.NotSupported,
        _ => XenDisk.Storage.IoStatus.IoError,
    };

    /// <summary>"No such file or directory (errno 2)": strerror text plus the number, for operator messages.</summary>
    internal static string Describe(int errno) =>
        $"{System.Runtime.InteropServices.Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})";
}
