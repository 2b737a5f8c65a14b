namespace XenDisk.Xen;

/// <summary>A Xen call on a control path failed; <see cref="Errno"/> is the positive errno it reported.</summary>
public class XenException : Exception
{
    public XenException(string operation, int errno, string? detail = null)
        : base(detail is null ? $"{operation} failed: errno {errno} ({Errnos.Name(errno)})" : $"{operation} failed: errno {errno} ({Errnos.Name(errno)}): {detail}")
    {
        Operation = operation;
        Errno = errno;
    }

    public string Operation { get; }

    public int Errno { get; }
}

/// <summary>A xenstore request failed (xenstore answers with errno names such as EACCES or EAGAIN).</summary>
public sealed class XenStoreException : XenException
{
    public XenStoreException(string operation, string path, int errno)
        : base(operation, errno, path)
    {
        Path = path;
    }

    public string Path { get; }
}

/// <summary>The Linux errno values the seam uses.</summary>
public static class Errnos
{
    public const int EPERM = 1;
    public const int ENOENT = 2;
    public const int EIO = 5;
    public const int E2BIG = 7;
    public const int EBADF = 9;
    public const int EAGAIN = 11;
    public const int ENOMEM = 12;
    public const int EACCES = 13;
    public const int EFAULT = 14;
    public const int EBUSY = 16;
    public const int EEXIST = 17;
    public const int ENODEV = 19;
    public const int EISDIR = 21;
    public const int EINVAL = 22;
    public const int ENOSPC = 28;
    public const int EROFS = 30;
    public const int ERANGE = 34;
    public const int ENOSYS = 38;
    public const int ENOTEMPTY = 39;
    public const int ENODATA = 61;
    public const int EOPNOTSUPP = 95;
    public const int ETIMEDOUT = 110;

    public static string Name(int errno) => errno switch
    {
        EPERM => "EPERM",
        ENOENT => "ENOENT",
        EIO => "EIO",
        E2BIG => "E2BIG",
        EBADF => "EBADF",
        EAGAIN => "EAGAIN",
        ENOMEM => "ENOMEM",
        EACCES => "EACCES",
        EFAULT => "EFAULT",
        EBUSY => "EBUSY",
        EEXIST => "EEXIST",
        ENODEV => "ENODEV",
        EISDIR => "EISDIR",
        EINVAL => "EINVAL",
        ENOSPC => "ENOSPC",
        EROFS => "EROFS",
        ERANGE => "ERANGE",
        ENOSYS => "ENOSYS",
        ENOTEMPTY => "ENOTEMPTY",
        ENODATA => "ENODATA",
        EOPNOTSUPP => "EOPNOTSUPP",
        ETIMEDOUT => "ETIMEDOUT",
        _ => "errno " + errno.ToString(System.Globalization.CultureInfo.InvariantCulture),
    };
}
