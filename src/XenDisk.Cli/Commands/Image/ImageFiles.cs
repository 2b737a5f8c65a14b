using System.CommandLine;
using Microsoft.Extensions.Logging;
using XenDisk.Cow.Overlays;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Provider;
using XenDisk.Cow.Storage;
using XenDisk.Storage;
using XenDisk.Storage.Iscsi;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// Finding and opening the image a command names. Backing files named inside images are followed
/// only under the image's own directory and the directories given with --allow-base: images are
/// untrusted, and one naming /etc/shadow as its base must not get it read.
/// </summary>
internal static class ImageFiles
{
    /// <summary>The option every command that may follow a backing file takes.</summary>
    public static Option<string[]> AllowBaseOption() => new("--allow-base")
    {
        Description = "Also follow backing files under this directory (repeatable); the image's own directory is always allowed",
        Arity = ArgumentArity.ZeroOrMore,
    };

    /// <summary>-f: the image's format, read from its magic when not given.</summary>
    public static Option<string?> FormatOption() => new("-f", "--format")
    {
        Description = $"Image format ({ImageFormats.Names}); read from the file's magic when not given",
    };

    /// <summary>
    /// The format of an existing image: the given one, or the file's magic. Writes the refusal and sets
    /// <paramref name="exitCode"/> (2 for a bad format name, 1 for a file that cannot be read) when it fails.
    /// </summary>
    public static bool TryResolveFormat(ParseResult parse, string path, string? formatName, out ImageFormat format, out int exitCode)
    {
        format = ImageFormat.Raw;
        exitCode = 0;
        if (formatName != null && !ImageFormats.TryParse(formatName, out format))
        {
            exitCode = CommandErrors.Invalid(parse, $"unknown image format '{formatName}' (use {ImageFormats.Names})");
            return false;
        }
        if (ImageLuns.IsLun(path))
        {
            try
            {
                ImageFormat probed = ImageLuns.Probe(path);
                format = formatName == null ? probed : format;
                if (ImageFormats.Overlay(format)?.LunRefusal is { } refusal)
                {
                    exitCode = CommandErrors.Failed(parse, $"'{IscsiUrl.Redact(path)}': {refusal}");
                    return false;
                }
                return true;
            }
            catch (StorageException e)
            {
                exitCode = CommandErrors.Failed(parse, e.Message);
                return false;
            }
        }
        if (Directory.Exists(path))
        {
            exitCode = CommandErrors.Failed(parse, $"'{path}' is a directory, not an image");
            return false;
        }
        if (!File.Exists(path))
        {
            exitCode = CommandErrors.Failed(parse, $"cannot open '{path}': no such file");
            return false;
        }
        if (formatName == null)
        {
            try
            {
                format = ImageFormats.Probe(path);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                exitCode = CommandErrors.Failed(parse, $"cannot read '{path}': {e.Message}");
                return false;
            }
        }
        return true;
    }

    /// <summary>
    /// <see cref="TryResolveFormat"/> for the commands that work on overlays: <paramref name="overlay"/>
    /// is the image's overlay format, or null for a raw image, which has no overlay metadata.
    /// </summary>
    public static bool TryResolveOverlay(ParseResult parse, string path, string? formatName, out OverlayFormat? overlay, out int exitCode)
    {
        overlay = null;
        if (!TryResolveFormat(parse, path, formatName, out ImageFormat format, out exitCode))
        {
            return false;
        }
        overlay = ImageFormats.Overlay(format);
        return true;
    }

    /// <summary>
    /// The one place the image tools turn what a command names into a block device: an iSCSI URL is a
    /// LUN reached through libiscsi with the service configuration's initiator name and CHAP credentials
    /// (reserved under a one-off key while it is open for writing); anything else is a file or block
    /// device, opened with QEMU's image locks, through the page cache and byte-exact (a header read
    /// sees what is there, a raw file's length is its size). Throws <see cref="StorageException"/>.
    /// </summary>
    public static IBlockDevice OpenImage(string path, bool readOnly) => ImageLuns.IsLun(path)
        ? IscsiBlockDevice.Open(IscsiUrl.Parse(path), readOnly, ImageLuns.Options())
        : FileImageDevice.Open(Path.GetFullPath(path), readOnly);

    /// <summary>
    /// <see cref="OpenImage"/> for raw data rather than metadata: a file or block device through
    /// <see cref="ImageLocks.OpenRaw"/> (whole sectors, O_DIRECT unless <paramref name="options"/> say
    /// otherwise), a LUN as <see cref="OpenImage"/> opens it.
    /// </summary>
    public static IBlockDevice OpenRawImage(string path, bool readOnly, RawDeviceOptions? options = null) => ImageLuns.IsLun(path)
        ? OpenImage(path, readOnly)
        : ImageLocks.OpenRaw(Path.GetFullPath(path), readOnly, options);

    /// <summary>An image name as the tools print and compare it: a LUN's canonical URL, or a file's full path.</summary>
    public static string FullName(string path) => ImageLuns.IsLun(path) ? IscsiUrl.Parse(path).ToString() : Path.GetFullPath(path);

    /// <summary>True when an image the tools would create or open at <paramref name="path"/> is there (a LUN always is: its login says otherwise).</summary>
    public static bool Exists(string path) => ImageLuns.IsLun(path) || File.Exists(path);

    /// <summary>The image's directory and the --allow-base directories, as absolute paths (a LUN has no directory: --allow-base only).</summary>
    public static string[] AllowedDirectories(string imagePath, IEnumerable<string>? allowBase)
    {
        if (ImageLuns.IsLun(imagePath))
        {
            return [.. (allowBase ?? []).Select(Path.GetFullPath)];
        }
        string imageDirectory = Path.GetDirectoryName(Path.GetFullPath(imagePath)) ?? "/";
        return [imageDirectory, .. (allowBase ?? []).Select(Path.GetFullPath)];
    }

    /// <summary>
    /// The policy for image operations: a backing file is followed when, with every symbolic link in
    /// its path resolved, it lies under the image's directory or an --allow-base directory (the rule the
    /// backend's disk provider applies), so a link placed beside an image cannot lead elsewhere.
    /// </summary>
    public static BackingFilePolicy BackingPolicy(string imagePath, IEnumerable<string>? allowBase)
    {
        string[] roots = AllowedDirectories(imagePath, allowBase)
            .Select(d => Path.TrimEndingDirectorySeparator(SymbolicLinks.Resolve(d)) + Path.DirectorySeparatorChar).ToArray();
        return new BackingFilePolicy
        {
            Allow = (fullPath, _) =>
            {
                if (ImageLuns.IsLun(fullPath))
                {
                    // A LUN lies under no directory: the tools reach LUNs wherever the configuration lets them log in.
                    return true;
                }
                string real = SymbolicLinks.Resolve(fullPath);
                return roots.Any(root => real.StartsWith(root, StringComparison.Ordinal));
            },
        };
    }

    /// <summary>
    /// Opens an image for guest-style I/O through the backend's own disk provider (the same devices,
    /// caches and checks a guest's disk gets): raw:PATH, or an overlay as its format opens it
    /// (<see cref="OverlayFormat.OpenForIo"/>) with the base it records. Throws <see cref="StorageException"/>.
    /// </summary>
    public static IBlockDevice OpenForIo(string path, ImageFormat format, IEnumerable<string>? allowBase, bool readOnly, ILogger? logger = null, string? policy = null)
    {
        try
        {
            return OpenThroughProvider(path, format, allowBase, readOnly, logger, policy);
        }
        catch (StorageException e) when (e.Message.Contains("allowed base directory", StringComparison.Ordinal))
        {
            // The provider speaks to the service's configuration; on the command line the setting is --allow-base.
            throw new StorageException(e.Message + " On the command line: --allow-base DIR.", e.Errno, e);
        }
    }

    private static IBlockDevice OpenThroughProvider(string path, ImageFormat format, IEnumerable<string>? allowBase, bool readOnly, ILogger? logger, string? policy)
    {
        string fullPath = FullName(path);
        CowDiskProvider provider = new(new CowProviderOptions
        {
            AllowedBaseDirectories = AllowedDirectories(fullPath, allowBase),
            Logger = logger,
            RawProvider = new RawDiskProvider(new RawDiskProviderOptions { Iscsi = ImageLuns.Options() }),
        });
        if (ImageFormats.Overlay(format) is { } overlay)
        {
            return overlay.OpenForIo(fullPath, readOnly, provider, (storage, storageReadOnly) => OpenRawImage(storage, storageReadOnly), policy);
        }
        return provider.Open(new DiskSpecification("raw:" + fullPath, readOnly));
    }

    /// <summary>
    /// Refuses, with the option that would allow it, an overlay whose base lies outside the allowed
    /// directories (deeper layers are checked by the engine as it opens them). A standalone overlay's
    /// base is checked only for a commit, the one operation that opens it.
    /// </summary>
    public static void CheckBase(string imagePath, OverlayFormat format, IEnumerable<string>? allowBase, bool forCommit)
    {
        OverlayBase? recorded;
        using (IBlockDevice device = OpenImage(imagePath, readOnly: true))
        {
            recorded = format.RecordedBase(device, imagePath);
        }
        if (recorded == null || (!forCommit && !recorded.NeededForReads))
        {
            return;
        }
        if (!BackingPolicy(imagePath, allowBase).Allows(recorded.FullPath, recorded.Name))
        {
            string real = SymbolicLinks.Resolve(recorded.FullPath);
            throw new StorageException($"'{imagePath}' names the backing file '{recorded.Name}' ({(real == recorded.FullPath ? recorded.FullPath : $"{recorded.FullPath} -> {real}")}), which is outside the image's directory and the backing file policy does not allow; allow it with --allow-base {Path.GetDirectoryName(real)}");
        }
    }
}
