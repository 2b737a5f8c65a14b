namespace XenDisk.Xen;

/// <summary>A Xen call on a control path failed; <see cref="Errno"/> is the positive errno it reported (values from Tmds.LibC, names from <see cref="XenDisk.Libc.Errno"/>).</summary>
public class XenException : Exception
{
    public XenException(string operation, int errno, string? detail = null)
        : base(detail is null ? $"{operation} failed: errno {errno} ({XenDisk.Libc.Errno.Name(errno)})" : $"{operation} failed: errno {errno} ({XenDisk.Libc.Errno.Name(errno)}): {detail}")
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
