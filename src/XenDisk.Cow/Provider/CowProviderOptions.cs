using Microsoft.Extensions.Logging;
using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Overlays;
using XenDisk.Cow.Policies;
using XenDisk.Storage;

namespace XenDisk.Cow.Provider;

/// <summary>Configuration of <see cref="CowDiskProvider"/>; validated when the provider is constructed.</summary>
public sealed record CowProviderOptions
{
    /// <summary>
    /// Directories whose files (after following symbolic links) may be backing files named inside
    /// qcow2 images, and the only places a <c>cow:</c> base may live when any are configured. Empty
    /// (the default): qcow2 images with a backing file are refused, and <c>cow:</c> bases may be anywhere.
    /// </summary>
    public IReadOnlyList<string> AllowedBaseDirectories { get; init; } = [];

    /// <summary>Metadata policy when the target gives no <c>policy=</c>.</summary>
    public MetadataPolicy DefaultPolicy { get; init; } = MetadataPolicy.Flush;

    /// <summary>Overlay format when a <c>cow:</c> target gives no <c>format=</c>.</summary>
    public OverlayFormat DefaultOverlayFormat { get; init; } = OverlayFormat.Qcow2;

    /// <summary>Cluster size of new qcow2 overlays when the target gives no <c>cluster=</c>: QEMU's default.</summary>
    public int DefaultClusterSize { get; init; } = 64 * 1024;

    /// <summary>Grain size of new bitmap overlays when the target gives no <c>grain=</c>.</summary>
    public int DefaultGrainSize { get; init; } = BitmapFormat.DefaultGrainSize;

    /// <summary>Where opened images log what a request's status cannot say (a qcow2 image found corrupt); null: nowhere.</summary>
    public ILogger? Logger { get; init; }

    /// <summary>Opens raw images, raw bases and the storage under bitmap overlays.</summary>
    public RawDiskProvider RawProvider { get; init; } = new();

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid setting.</summary>
    public void Validate()
    {
        foreach (string directory in AllowedBaseDirectories)
        {
            if (string.IsNullOrEmpty(directory) || !Path.IsPathFullyQualified(directory))
            {
                throw new ArgumentException($"AllowedBaseDirectories: \"{directory}\" is not an absolute path.", nameof(AllowedBaseDirectories));
            }
        }
        if (!Enum.IsDefined(DefaultPolicy))
        {
            throw new ArgumentException($"DefaultPolicy: {DefaultPolicy} is not a metadata policy.", nameof(DefaultPolicy));
        }
        if (DefaultOverlayFormat is null)
        {
            throw new ArgumentException("DefaultOverlayFormat: no overlay format given.", nameof(DefaultOverlayFormat));
        }
        if (!int.IsPow2(DefaultClusterSize) || DefaultClusterSize < 512 || DefaultClusterSize > 2 << 20)
        {
            throw new ArgumentException($"DefaultClusterSize: {DefaultClusterSize} is not a power of two from 512 to 2 MiB.", nameof(DefaultClusterSize));
        }
        if (!BitmapFormat.IsGrainSize(DefaultGrainSize))
        {
            throw new ArgumentException($"DefaultGrainSize: {DefaultGrainSize} is not a power of two from 512 to 64 KiB.", nameof(DefaultGrainSize));
        }
        ArgumentNullException.ThrowIfNull(RawProvider);
    }
}
