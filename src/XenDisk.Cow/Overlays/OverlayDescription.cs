using System.Text.Json.Serialization;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Overlays;

/// <summary>
/// What <see cref="OverlayFormat.Describe"/> reads from an overlay file without opening it for I/O or
/// following its base: the fields qemu-img info reports and XenDisk's additions. A member a format does
/// not have is null. Not sealed: `image info` reports it with the file's name and format added.
/// </summary>
public record OverlayDescription
{
    public required long VirtualSize { get; init; }

    /// <summary>The image file's length (sparse files take less on disk).</summary>
    public required long FileSize { get; init; }

    public int? ClusterSize { get; init; }

    public int? GrainSize { get; init; }

    public string? BackingFile { get; init; }

    public string? BackingFormat { get; init; }

    /// <summary>Where <see cref="BackingFile"/> resolves to, by the format's rule for base names.</summary>
    public string? FullBackingFilename { get; init; }

    /// <summary>Guest data held in this image (qcow2: data clusters; bitmap: mapped grains).</summary>
    public long? AllocatedBytes { get; init; }

    public IReadOnlyList<string> Features { get; init; } = [];

    public bool Dirty { get; init; }

    public bool Corrupt { get; init; }

    /// <summary>Memory the engine needs to keep all of one GiB's mapping metadata cached.</summary>
    public long? MetadataBytesPerGiB { get; init; }

    public int? Version { get; init; }

    public int? RefcountBits { get; init; }

    public bool? ExtendedL2 { get; init; }

    public bool? LazyRefcounts { get; init; }

    public int? Snapshots { get; init; }

    /// <summary>The persistent dirty bitmaps the image holds, where the format has them.</summary>
    public IReadOnlyList<OverlayBitmapInfo>? Bitmaps { get; init; }

    /// <summary>Every unit is in the overlay (hydrated); the base is no longer read. Null where the format does not record it.</summary>
    public bool? Standalone { get; init; }

    /// <summary>The base's size when the overlay was made, where the format records it.</summary>
    public long? BaseSize { get; init; }

    /// <summary>
    /// The format's own information as qemu-img info prints it under "Format specific information:",
    /// one line each, indented relative to that heading (not in JSON, which has the same facts as fields).
    /// </summary>
    [JsonIgnore]
    public IReadOnlyList<string> Details { get; init; } = [];
}

/// <summary>One persistent dirty bitmap: qemu-img info's name, granularity and flags ("in-use", "auto").</summary>
public sealed record OverlayBitmapInfo(string Name, long Granularity, IReadOnlyList<string> Flags);

/// <summary>How large a new image of the format would be (qemu-img measure's two figures).</summary>
/// <param name="Required">The file size a new image holding the data needs.</param>
/// <param name="FullyAllocated">The file size when every unit is allocated.</param>
public readonly record struct OverlaySizeEstimate(long Required, long FullyAllocated);

/// <summary>The operations on image files a format may lack; <see cref="OverlayFormat.Refuses"/> says which.</summary>
public enum OverlayFileOperation
{
    Resize,
    Snapshot,
    Rebase,
    Measure,
    Amend,

    /// <summary>Persistent dirty bitmaps (qemu-img bitmap).</summary>
    Bitmaps,
}

/// <summary>One change to a persistent dirty bitmap, as qemu-img bitmap's options name them.</summary>
public enum OverlayBitmapOperation
{
    Add,
    Remove,
    Clear,
    Enable,
    Disable,

    /// <summary>Mark dirty what another bitmap marks dirty.</summary>
    Merge,
}

/// <summary>One step of <see cref="OverlayFormat.EditBitmaps"/>; <paramref name="Label"/> names it in messages (the option as given).</summary>
/// <param name="Source">For a merge, the bitmap whose dirty clusters are added.</param>
public readonly record struct OverlayBitmapStep(OverlayBitmapOperation Operation, string Label, string? Source = null);

/// <summary>What <see cref="OverlayFormat.EditBitmaps"/> does to one bitmap, in order.</summary>
public sealed record OverlayBitmapEdit
{
    public required string Bitmap { get; init; }

    public required IReadOnlyList<OverlayBitmapStep> Steps { get; init; }

    /// <summary>The granularity of an added bitmap in bytes; 0 for the format's default.</summary>
    public long Granularity { get; init; }

    /// <summary>The image a merge reads its source bitmap from; null for the edited image itself.</summary>
    public string? SourceFile { get; init; }
}

/// <summary>How <see cref="OverlayFormat.Rebase"/> runs.</summary>
public sealed record OverlayRebaseOptions
{
    /// <summary>The new base as the image is to record it, or null to remove the base (which hydrates).</summary>
    public string? NewBase { get; init; }

    /// <summary>The new base's format (raw or qcow2); the format is never probed.</summary>
    public string? NewBaseFormat { get; init; }

    /// <summary>Only rewrite the recorded base (qemu-img rebase -u): correct only when the new base has the same contents.</summary>
    public bool Unsafe { get; init; }

    /// <summary>Called with (guest bytes examined, virtual size) while the differences are copied.</summary>
    public Action<long, long>? Progress { get; init; }
}

/// <summary>What <see cref="OverlayFormat.Create"/> makes: the size, the base, and the format's own settings.</summary>
public sealed record OverlayCreateOptions
{
    public required long VirtualSize { get; init; }

    /// <summary>The base as the image is to record it, or null for none.</summary>
    public string? BaseName { get; init; }

    /// <summary>The base's format (raw or qcow2); never probed.</summary>
    public string? BaseFormat { get; init; }

    /// <summary>Where the base lies (a relative name is relative to the new image's directory), or null for none.</summary>
    public string? BasePath { get; init; }

    /// <summary>The format's options by name (qemu-img create -o key=value), validated by the format.</summary>
    public IReadOnlyDictionary<string, string> Settings { get; init; } = new Dictionary<string, string>();

    /// <summary>How a size-valued setting (cluster_size=64k) is read, in the caller's syntax; null when it is no size.</summary>
    public required Func<string, long?> ParseSize { get; init; }

    /// <summary>
    /// Opens raw storage (path or LUN URL, read-only) for a format that writes onto the image's storage
    /// or reads its base directly; by default a file with QEMU's image locks.
    /// </summary>
    public Func<string, bool, IBlockDevice> OpenStorage { get; init; } = (path, readOnly) => ImageLocks.OpenRaw(Path.GetFullPath(path), readOnly);
}
