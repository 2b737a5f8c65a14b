using XenDisk.Storage;

namespace XenDisk.Service.Storage;

/// <summary>
/// The service's <see cref="IDiskProvider"/> until the copy-on-write provider replaces its registration:
/// accepts a plain absolute path or one prefixed "raw:" (the prefix is stripped), checks it against the
/// <see cref="ImageDirectoryPolicy"/>, and opens it with the raw provider. A target with any other scheme
/// ("qcow2:", "cow:", ...) is refused with a message naming the scheme, since only raw disks are served.
/// </summary>
public sealed class SchemeDiskProvider : IDiskProvider
{
    public const string RawScheme = "raw";

    private readonly IDiskProvider _raw;
    private readonly ImageDirectoryPolicy _policy;

    public SchemeDiskProvider(IDiskProvider raw, ImageDirectoryPolicy policy)
    {
        ArgumentNullException.ThrowIfNull(raw);
        ArgumentNullException.ThrowIfNull(policy);
        _raw = raw;
        _policy = policy;
    }

    public IBlockDevice Open(DiskSpecification specification)
    {
        ArgumentNullException.ThrowIfNull(specification);
        (string? scheme, string path) = SplitScheme(specification.Target);
        if (scheme is not null && !string.Equals(scheme, RawScheme, StringComparison.Ordinal))
        {
            throw new StorageException($"Disk target \"{specification.Target}\" uses the scheme \"{scheme}:\", which this service does not open; supported: a plain path or \"{RawScheme}:/path\".");
        }

        _policy.Check(path);
        return _raw.Open(specification with { Target = path });
    }

    /// <summary>
    /// "scheme:rest" when the text before the first ':' is a scheme name (a letter, then letters, digits,
    /// '+', '-', '.', as in RFC 3986 §3.1); otherwise no scheme. Absolute paths start with '/', so they
    /// never look like a scheme, even with a ':' inside.
    /// </summary>
    public static (string? Scheme, string Path) SplitScheme(string target)
    {
        ArgumentNullException.ThrowIfNull(target);
        int colon = target.IndexOf(':', StringComparison.Ordinal);
        if (colon <= 0 || !char.IsAsciiLetter(target[0]))
        {
            return (null, target);
        }

        ReadOnlySpan<char> name = target.AsSpan(0, colon);
        foreach (char c in name)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '+' or '-' or '.'))
            {
                return (null, target);
            }
        }

        return (name.ToString().ToLowerInvariant(), target[(colon + 1)..]);
    }
}
