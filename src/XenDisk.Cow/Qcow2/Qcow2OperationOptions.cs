using XenDisk.Cow.Policies;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>How <see cref="Qcow2Image.Hydrate"/> runs.</summary>
public sealed record Qcow2HydrateOptions
{
    /// <summary>
    /// The most bytes read from the backing chain per second; 0 for no limit. The base is usually
    /// shared by many guests, so the limit is on what hydration takes from it.
    /// </summary>
    public long BytesPerSecond { get; init; }

    /// <summary>
    /// Bytes copied between metadata write-backs: an interrupted run loses at most this much work
    /// (the clusters it copied stay leaked, never referenced), and a re-run skips everything recorded.
    /// </summary>
    public long CheckpointBytes { get; init; } = DefaultCheckpointBytes;

    /// <summary>Called with (guest bytes examined, virtual size) from the hydrating thread.</summary>
    public Action<long, long>? Progress { get; init; }

    /// <summary>Remove the backing link from the header once nothing reads through to the backing file (the default).</summary>
    public bool DropBackingLink { get; init; } = true;

    public const long DefaultCheckpointBytes = 64L * 1024 * 1024;
}

/// <summary>How <see cref="Qcow2Image.Commit"/> runs.</summary>
public sealed record Qcow2CommitOptions
{
    /// <summary>Afterwards, deallocate every cluster of the overlay so that it reads through to the (updated) backing image again.</summary>
    public bool EmptyOverlay { get; init; }

    /// <summary>Called with (guest bytes examined, virtual size) from the committing thread.</summary>
    public Action<long, long>? Progress { get; init; }
}

/// <summary>How <see cref="Qcow2Image.Rebase"/> runs.</summary>
public sealed record Qcow2RebaseOptions
{
    /// <summary>
    /// Only rewrite the backing file name and format (qemu-img rebase -u): correct only when the new
    /// backing file has the same contents as the old one wherever the overlay reads through.
    /// </summary>
    public bool Unsafe { get; init; }

    /// <summary>Called with (guest bytes examined, virtual size) in safe mode.</summary>
    public Action<long, long>? Progress { get; init; }

    /// <summary>The most bytes read from the old and new backing chains per second in safe mode; 0 for no limit.</summary>
    public long BytesPerSecond { get; init; }
}

/// <summary>How the file-level operations in <see cref="Qcow2Operations"/> open images.</summary>
public sealed record Qcow2FileOptions
{
    /// <summary>
    /// Which backing files named in the images may be opened (the image's own chain and, for rebase,
    /// the new backing file). Images are untrusted, so nothing is followed by default.
    /// </summary>
    public BackingFilePolicy BackingPolicy { get; init; } = BackingFilePolicy.None;

    /// <summary>Metadata policy of the image while the operation runs.</summary>
    public MetadataPolicy Policy { get; init; } = MetadataPolicy.Flush;
}

/// <summary>What <see cref="Qcow2Operations.Snapshot"/> creates.</summary>
public sealed record Qcow2SnapshotOptions
{
    /// <summary>Cluster size of the new overlay; 0 means that of the frozen image.</summary>
    public int ClusterSize { get; init; }

    /// <summary>Extended L2 entries in the new overlay; null for the default (on for clusters of 16 KiB and more).</summary>
    public bool? ExtendedL2 { get; init; }

    /// <summary>
    /// The backing file name stored in the new overlay; null stores the frozen image's file name when
    /// both files share a directory (the chain can then move as a whole), else its absolute path.
    /// </summary>
    public string? BackingName { get; init; }
}
