using Microsoft.Extensions.Logging;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Provider;
using XenDisk.Cow.Storage;
using XenDisk.Storage;
using XenDisk.Storage.Iscsi;

namespace XenDisk.Cow.Overlays;

/// <summary>
/// What the disk provider asks of a format when a guest's disk is an overlay over a base
/// (cow:BASE,OVERLAY): the paths as the target names them, the settings that apply, and how to open
/// raw storage (the provider's raw provider, with QEMU's image locks). Every refusal is a
/// <see cref="StorageException"/> whose message is meant for the operator.
/// </summary>
internal sealed record OverlayAttachment
{
    public required string BasePath { get; init; }

    public required string OverlayPath { get; init; }

    /// <summary>The base's format as the target names it (raw or qcow2).</summary>
    public required string BaseFormat { get; init; }

    public required MetadataPolicy Policy { get; init; }

    public required bool ReadOnly { get; init; }

    /// <summary>The cluster size of a qcow2 overlay the format creates.</summary>
    public required int ClusterSize { get; init; }

    /// <summary>The grain size of a bitmap overlay the format creates.</summary>
    public required int GrainSize { get; init; }

    public ILogger? Logger { get; init; }

    /// <summary>Opens raw storage (path, read-only) as the provider opens raw disks, locked.</summary>
    public required Func<string, bool, IBlockDevice> OpenStorage { get; init; }

    public static StorageException Refuse(string message, int errno = 0, Exception? inner = null) => new(message, errno, inner);

    /// <summary>The same file, or the same iSCSI LUN (a URL names a LUN, never a path).</summary>
    public static bool SamePath(string a, string b) => IsLun(a) || IsLun(b)
        ? IsLun(a) && IsLun(b) && IscsiUrl.Parse(a) == IscsiUrl.Parse(b)
        : Path.GetFullPath(a) == Path.GetFullPath(b) || SymbolicLinks.Resolve(a) == SymbolicLinks.Resolve(b);

    /// <summary>An iSCSI LUN named by URL, opened through the raw provider.</summary>
    public static bool IsLun(string path) => IscsiUrl.IsIscsi(path);

    /// <summary>A LUN always "exists" here: whether it can be reached is for its login to say, in its own words.</summary>
    public static bool Exists(string path) => IsLun(path) || File.Exists(path);

    /// <summary>
    /// True for a regular file, false for a block device; refuses anything else (a FIFO would block
    /// the open, a directory or character device is no disk). The raw device's checks decide.
    /// </summary>
    public static bool IsRegularFileOrRefuse(string path)
    {
        try
        {
            using RawBlockDevice probe = RawBlockDevice.Open(path, readOnly: true, new RawDeviceOptions { DirectIo = false });
            return !probe.IsBlockDevice;
        }
        catch (StorageException e)
        {
            throw Refuse($"Overlay {path} cannot be used: {e.Message}", e.Errno, e);
        }
    }
}

/// <summary>An overlay attached by its format, and whether its file goes when the disk closes (policy=transient).</summary>
internal readonly record struct AttachedOverlay(IOverlayImage Image, bool DeleteFileOnClose);

