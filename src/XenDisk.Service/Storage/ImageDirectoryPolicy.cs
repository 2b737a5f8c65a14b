using XenDisk.Service.Configuration;
using XenDisk.Storage;

namespace XenDisk.Service.Storage;

/// <summary>
/// Which paths the service may open as disks (Storage:AllowedImageDirectories, Storage:AllowBlockDevices).
/// The toolstack writes the disk path, but a typo or a hostile toolstack user in a driver-domain setup
/// must not make the service open /etc/shadow as a writable disk. Paths are compared after resolving
/// every symbolic link, so a link inside an allowed directory cannot point out of it.
/// </summary>
public sealed class ImageDirectoryPolicy
{
    /// <summary>Linux's MAXSYMLINKS: more links than this in one path is a loop.</summary>
    private const int MaxSymbolicLinks = 40;

    private const string DeviceDirectory = "/dev/";

    private readonly string[] _directories;
    private readonly bool _allowBlockDevices;

    public ImageDirectoryPolicy(IEnumerable<string> allowedDirectories, bool allowBlockDevices)
    {
        ArgumentNullException.ThrowIfNull(allowedDirectories);
        _directories = [.. allowedDirectories.Select(d => Path.TrimEndingDirectorySeparator(Canonicalize(d)) + "/")];
        _allowBlockDevices = allowBlockDevices;
    }

    public static ImageDirectoryPolicy From(StorageSettings settings) =>
        new(settings.EffectiveAllowedImageDirectories, settings.AllowBlockDevices);

    public IReadOnlyList<string> AllowedDirectories => _directories;

    /// <summary>Throws <see cref="StorageException"/> when <paramref name="path"/> (absolute) may not be opened.</summary>
    public void Check(string path)
    {
        if (string.IsNullOrEmpty(path) || !Path.IsPathFullyQualified(path))
        {
            // The raw provider explains empty and relative paths.
            return;
        }

        string resolved = Canonicalize(path);
        if (resolved.StartsWith(DeviceDirectory, StringComparison.Ordinal))
        {
            if (!_allowBlockDevices)
            {
                throw new StorageException($"Disk \"{path}\" is a device node, and Storage:AllowBlockDevices is false.");
            }

            return;
        }

        if (!_directories.Any(d => resolved.StartsWith(d, StringComparison.Ordinal)))
        {
            string shown = resolved == path ? $"\"{path}\"" : $"\"{path}\" (which resolves to \"{resolved}\")";
            throw new StorageException($"Disk {shown} is outside the allowed image directories ({string.Join(", ", _directories)}); add its directory to Storage:AllowedImageDirectories.");
        }
    }

    /// <summary>
    /// The absolute path with "." and ".." removed and every symbolic link along it resolved (realpath(3),
    /// in managed code). Components that do not exist are kept as they are: opening the path reports them.
    /// </summary>
    internal static string Canonicalize(string path)
    {
        string current = Path.GetFullPath(path);
        for (int links = 0; links <= MaxSymbolicLinks; links++)
        {
            string[] parts = current.Split('/', StringSplitOptions.RemoveEmptyEntries);
            string prefix = "/";
            bool replaced = false;
            for (int i = 0; i < parts.Length; i++)
            {
                string next = Path.Join(prefix, parts[i]);
                if (new FileInfo(next).LinkTarget is { } target)
                {
                    string resolved = Path.IsPathRooted(target) ? target : Path.Join(prefix, target);
                    current = Path.GetFullPath(Path.Join(resolved, string.Join('/', parts[(i + 1)..])));
                    replaced = true;
                    break;
                }

                prefix = next;
            }

            if (!replaced)
            {
                return current;
            }
        }

        throw new StorageException($"Disk path \"{path}\" has more than {MaxSymbolicLinks} symbolic links (a loop?).");
    }
}
