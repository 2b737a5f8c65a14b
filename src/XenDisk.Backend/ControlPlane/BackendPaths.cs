using System.Globalization;

namespace XenDisk.Backend.ControlPlane;

/// <summary>
/// The xenstore layout the toolstack creates (xen docs/misc/xenstore-paths):
/// /local/domain/&lt;backend-domid&gt;/backend/&lt;kind&gt;/&lt;frontend-domid&gt;/&lt;devid&gt; for us, and
/// /local/domain/&lt;frontend-domid&gt;/device/&lt;class&gt;/&lt;devid&gt; for the guest.
/// </summary>
internal static class BackendPaths
{
    /// <summary>Domain ids from DOMID_FIRST_RESERVED (0x7FF0) up are special (DOMID_SELF, DOMID_IO, ...), never a guest.</summary>
    public const uint FirstReservedDomainId = 0x7FF0;

    public static string KindRoot(string domainPath, string kind) => $"{domainPath}/backend/{kind}";

    public static string Device(string kindRoot, uint frontendDomainId, int deviceId) =>
        string.Create(CultureInfo.InvariantCulture, $"{kindRoot}/{frontendDomainId}/{deviceId}");

    public static string Key(string directory, string key) => directory + "/" + key;

    /// <summary>A single, non-empty path component of xenstore's allowed characters.</summary>
    public static bool IsPathComponent(string? text)
    {
        if (string.IsNullOrEmpty(text))
        {
            return false;
        }

        foreach (char c in text)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '@'))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>Strict decimal (no sign, no spaces, no hex), as the numbers in xenstore are written.</summary>
    public static bool TryParseDecimal(string? text, out uint value) =>
        uint.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out value);

    /// <summary>A guest domain id: decimal and below the reserved range.</summary>
    public static bool TryParseDomainId(string? text, out uint domainId) =>
        TryParseDecimal(text, out domainId) && domainId < FirstReservedDomainId;

    /// <summary>A device id: the decimal virtual-device number the toolstack uses as the directory name.</summary>
    public static bool TryParseDeviceId(string? text, out int deviceId)
    {
        if (TryParseDecimal(text, out uint value) && value <= int.MaxValue)
        {
            deviceId = (int)value;
            return true;
        }

        deviceId = 0;
        return false;
    }

    /// <summary>
    /// Splits a watched path below a kind root into its frontend-domid and devid components.
    /// Returns the depth reached: 0 (the root itself), 1 (a frontend domain directory) or 2 (a device,
    /// or a key below it); -1 when the path is not below the root or a component is malformed.
    /// </summary>
    public static int ParseBelowRoot(string kindRoot, string path, out uint frontendDomainId, out int deviceId)
    {
        frontendDomainId = 0;
        deviceId = 0;
        if (path.Length == kindRoot.Length && path == kindRoot)
        {
            return 0;
        }

        if (path.Length <= kindRoot.Length + 1 || !path.StartsWith(kindRoot, StringComparison.Ordinal) || path[kindRoot.Length] != '/')
        {
            return -1;
        }

        ReadOnlySpan<char> rest = path.AsSpan(kindRoot.Length + 1);
        int slash = rest.IndexOf('/');
        ReadOnlySpan<char> domain = slash < 0 ? rest : rest[..slash];
        if (!uint.TryParse(domain, NumberStyles.None, CultureInfo.InvariantCulture, out frontendDomainId) || frontendDomainId >= FirstReservedDomainId)
        {
            return -1;
        }

        if (slash < 0)
        {
            return 1;
        }

        rest = rest[(slash + 1)..];
        slash = rest.IndexOf('/');
        ReadOnlySpan<char> device = slash < 0 ? rest : rest[..slash];
        if (!uint.TryParse(device, NumberStyles.None, CultureInfo.InvariantCulture, out uint id) || id > int.MaxValue)
        {
            return -1;
        }

        deviceId = (int)id;
        return 2;
    }
}
