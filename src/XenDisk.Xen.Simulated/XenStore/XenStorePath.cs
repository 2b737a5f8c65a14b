using Tmds.Linux;

namespace XenDisk.Xen.Simulated.XenStore;

/// <summary>Path rules of xenstored (docs/misc/xenstore.txt "Paths").</summary>
internal static class XenStorePath
{
    /// <summary>XENSTORE_ABS_PATH_MAX.</summary>
    public const int MaxAbsolutePathLength = 3072;

    /// <summary>XENSTORE_PAYLOAD_MAX: a value must fit in one message.</summary>
    public const int MaxValueLength = 4096;

    public const string IntroduceDomain = "@introduceDomain";
    public const string ReleaseDomain = "@releaseDomain";

    /// <summary>Turns a relative path into "/local/domain/N/path" and checks the characters; throws EINVAL.</summary>
    public static string Resolve(string operation, string path, uint domainId)
    {
        ArgumentNullException.ThrowIfNull(path);
        string absolute = path.StartsWith('/') ? path : DomainPath(domainId) + "/" + path;
        if (!IsValidAbsolute(absolute))
        {
            throw new XenStoreException(operation, path, LibC.EINVAL);
        }

        return absolute;
    }

    public static bool IsSpecial(string path) => path is IntroduceDomain or ReleaseDomain;

    public static string DomainPath(uint domainId) =>
        "/local/domain/" + domainId.ToString(System.Globalization.CultureInfo.InvariantCulture);

    public static string Parent(string absolutePath)
    {
        int slash = absolutePath.LastIndexOf('/');
        return slash <= 0 ? "/" : absolutePath[..slash];
    }

    public static string Child(string absolutePath, string name) => absolutePath == "/" ? "/" + name : absolutePath + "/" + name;

    /// <summary>True when <paramref name="path"/> is <paramref name="ancestor"/> or lies below it.</summary>
    public static bool IsAtOrBelow(string path, string ancestor)
    {
        if (ancestor == "/")
        {
            return true;
        }

        return path.StartsWith(ancestor, StringComparison.Ordinal)
            && (path.Length == ancestor.Length || path[ancestor.Length] == '/');
    }

    private static bool IsValidAbsolute(string path)
    {
        if (path.Length == 0 || path[0] != '/' || path.Length > MaxAbsolutePathLength)
        {
            return false;
        }

        if (path == "/")
        {
            return true;
        }

        if (path[^1] == '/')
        {
            return false;
        }

        char previous = '\0';
        foreach (char c in path)
        {
            if (c == '/' && previous == '/')
            {
                return false;
            }

            if (!(char.IsAsciiLetterOrDigit(c) || c is '/' or '-' or '_' or '@'))
            {
                return false;
            }

            previous = c;
        }

        return true;
    }
}
