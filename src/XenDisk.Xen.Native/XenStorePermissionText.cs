using System.Globalization;

namespace XenDisk.Xen.Native;

/// <summary>
/// The text form xenstore uses for one permission entry (docs/misc/xenstore.txt, "PERM"): a letter
/// for the access ('n' none, 'r' read, 'w' write, 'b' both) followed by the domain id in decimal,
/// as in "n0", "r5", "w3", "b1". It is the form on the wire, in xenstore-ls -p and in xl's output.
/// </summary>
public static class XenStorePermissionText
{
    /// <summary>Formats one entry, e.g. (5, Read) -> "r5".</summary>
    public static string Format(XenStorePermission permission) =>
        AccessLetter(permission.Access) + permission.DomainId.ToString(CultureInfo.InvariantCulture);

    /// <summary>Formats a permission list as comma-separated entries ("n0,r5").</summary>
    public static string Format(IEnumerable<XenStorePermission> permissions) => string.Join(',', permissions.Select(Format));

    /// <summary>
    /// Parses one entry. Refuses anything but one known letter followed by a plain decimal domain
    /// id that fits in 32 bits (no sign, no spaces, no hex), since the text may come from an operator or a guest.
    /// </summary>
    public static bool TryParse(ReadOnlySpan<char> text, out XenStorePermission permission)
    {
        permission = default;
        if (text.Length < 2)
        {
            return false;
        }

        XenStoreAccess access;
        switch (text[0])
        {
            case 'n': access = XenStoreAccess.None; break;
            case 'r': access = XenStoreAccess.Read; break;
            case 'w': access = XenStoreAccess.Write; break;
            case 'b': access = XenStoreAccess.Both; break;
            default: return false;
        }

        ReadOnlySpan<char> digits = text[1..];
        foreach (char c in digits)
        {
            if (!char.IsAsciiDigit(c))
            {
                return false;
            }
        }

        if (!uint.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out uint domainId))
        {
            return false;
        }

        permission = new XenStorePermission(domainId, access);
        return true;
    }

    /// <summary>Parses one entry; throws <see cref="FormatException"/> naming the text when it is not a permission.</summary>
    public static XenStorePermission Parse(string text) =>
        TryParse(text, out XenStorePermission permission)
            ? permission
            : throw new FormatException($"'{text}' is not a xenstore permission (expected n, r, w or b followed by a domain id, e.g. r5)");

    /// <summary>The XS_PERM_* bits of the native struct to the seam's type; xenstored-internal bits are dropped.</summary>
    internal static XenStorePermission FromNative(Interop.XenStore.XsPermissions native) =>
        new(native.id, (XenStoreAccess)(native.perms & (Interop.XenStore.XS_PERM_READ | Interop.XenStore.XS_PERM_WRITE)));

    internal static Interop.XenStore.XsPermissions ToNative(XenStorePermission permission) => new()
    {
        id = permission.DomainId,
        perms = (uint)(permission.Access & XenStoreAccess.Both),
    };

    private static char AccessLetter(XenStoreAccess access) => (access & XenStoreAccess.Both) switch
    {
        XenStoreAccess.Read => 'r',
        XenStoreAccess.Write => 'w',
        XenStoreAccess.Both => 'b',
        _ => 'n',
    };
}
