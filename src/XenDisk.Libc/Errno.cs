using System.Collections.Frozen;
using System.Globalization;
using System.Runtime.InteropServices;
using static Tmds.Linux.LibC;

namespace XenDisk.Libc;

/// <summary>
/// The one errno table: names and operator text for the errno values XenDisk reports. The values
/// themselves come from Tmds.LibC (<c>Tmds.Linux.LibC.ENOENT</c> and so on); Xen's public errno.h and
/// xenstore's wire errors (xs_wire.h, XSD_ERRORS) use the same numbers and names as Linux.
/// </summary>
public static class Errno
{
    // Tmds.LibC exposes errno values as properties (they differ per architecture in general), so the
    // table is built once rather than written as a switch over constants.
    private static readonly FrozenDictionary<int, string> Names = new Dictionary<int, string>
    {
        [EPERM] = "EPERM",
        [ENOENT] = "ENOENT",
        [EINTR] = "EINTR",
        [EIO] = "EIO",
        [ENXIO] = "ENXIO",
        [E2BIG] = "E2BIG",
        [EBADF] = "EBADF",
        [EAGAIN] = "EAGAIN",
        [ENOMEM] = "ENOMEM",
        [EACCES] = "EACCES",
        [EFAULT] = "EFAULT",
        [EBUSY] = "EBUSY",
        [EEXIST] = "EEXIST",
        [ENODEV] = "ENODEV",
        [ENOTDIR] = "ENOTDIR",
        [EISDIR] = "EISDIR",
        [EINVAL] = "EINVAL",
        [ENOTTY] = "ENOTTY",
        [ENOSPC] = "ENOSPC",
        [EROFS] = "EROFS",
        [ERANGE] = "ERANGE",
        [ENOLCK] = "ENOLCK",
        [ENOSYS] = "ENOSYS",
        [ENOTEMPTY] = "ENOTEMPTY",
        [ENODATA] = "ENODATA",
        [EOPNOTSUPP] = "EOPNOTSUPP",
        [ETIMEDOUT] = "ETIMEDOUT",
        [ECANCELED] = "ECANCELED",
        [EDQUOT] = "EDQUOT",
    }.ToFrozenDictionary();

    /// <summary>"ENOENT"; "errno 1234" for a value the table does not name.</summary>
    public static string Name(int errno) =>
        Names.TryGetValue(errno, out string? name) ? name : "errno " + errno.ToString(CultureInfo.InvariantCulture);

    /// <summary>"No such file or directory (errno 2)": strerror text plus the number, for operator messages.</summary>
    public static string Describe(int errno) =>
        string.Create(CultureInfo.InvariantCulture, $"{Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})");
}
