namespace XenDisk.Cow.Provider;

/// <summary>
/// Resolves every symbolic link in a path, component by component, as the kernel does when it opens
/// the path (realpath(3) without the syscall): a link named inside an allowed directory must not
/// lead outside it. Components that do not exist are kept as they are.
/// </summary>
public static class SymbolicLinks
{
    /// <summary>Linux's limit on links followed in one lookup (MAXSYMLINKS); more means a loop.</summary>
    private const int MaximumLinks = 40;

    public static string Resolve(string fullPath)
    {
        int links = 0;
        return Resolve(Path.GetFullPath(fullPath), ref links);
    }

    private static string Resolve(string path, ref int links)
    {
        string[] parts = path.Split('/', StringSplitOptions.RemoveEmptyEntries);
        string current = "/";
        for (int i = 0; i < parts.Length; i++)
        {
            string part = parts[i];
            if (part == ".")
            {
                continue;
            }
            if (part == "..")
            {
                // current has no links left in it, so its parent is the real parent.
                current = Path.GetDirectoryName(current) ?? "/";
                continue;
            }
            string next = Path.Join(current, part);
            string? target = null;
            try
            {
                target = new FileInfo(next).LinkTarget;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Unreadable: treated as not a link; opening it later fails with its own message.
            }
            if (target == null)
            {
                current = next;
                continue;
            }
            if (++links > MaximumLinks)
            {
                throw new XenDisk.Storage.StorageException($"Too many levels of symbolic links resolving {path}.", errno: 40);
            }
            string rest = string.Join('/', parts[(i + 1)..]);
            string followed = Path.IsPathRooted(target) ? target : Path.Join(current, target);
            return Resolve(rest.Length == 0 ? followed : followed + "/" + rest, ref links);
        }
        return current;
    }
}
