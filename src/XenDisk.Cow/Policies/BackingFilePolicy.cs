namespace XenDisk.Cow.Policies;

/// <summary>
/// Decides whether a backing file named inside an image may be opened. Image files are untrusted: a
/// guest that can write its own overlay (or an uploaded image) could otherwise name any host file
/// (/etc/shadow, another tenant's disk) as its base and read it. Nothing is followed unless a
/// policy allows that exact resolved path.
/// </summary>
public sealed record BackingFilePolicy
{
    /// <summary>Follows no backing file at all (the default).</summary>
    public static BackingFilePolicy None { get; } = new();

    /// <summary>Directories whose files (after resolving "..", symbolic links are not followed here) may be backing files.</summary>
    public IReadOnlyList<string> AllowedDirectories { get; init; } = [];

    /// <summary>
    /// A custom decision: receives the full path the name resolves to and the name as stored in the
    /// image; returns true to allow. Consulted when <see cref="AllowedDirectories"/> does not allow the path.
    /// </summary>
    public Func<string, string, bool>? Allow { get; init; }

    /// <summary>Allows only files inside <paramref name="directories"/>.</summary>
    public static BackingFilePolicy InDirectories(params string[] directories) => new() { AllowedDirectories = directories };

    /// <summary>True when <paramref name="fullPath"/> (already resolved) may be opened.</summary>
    public bool Allows(string fullPath, string storedName)
    {
        foreach (string directory in AllowedDirectories)
        {
            string root = Path.TrimEndingDirectorySeparator(Path.GetFullPath(directory)) + Path.DirectorySeparatorChar;
            if (fullPath.StartsWith(root, StringComparison.Ordinal))
            {
                return true;
            }
        }
        return Allow?.Invoke(fullPath, storedName) ?? false;
    }
}
