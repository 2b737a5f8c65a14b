using XenDisk.Cow.Policies;
using XenDisk.Storage;

namespace XenDisk.Cow.Overlays;

/// <summary>What an overlay operation (hydrate, commit; for qcow2 also rebase) did.</summary>
public sealed record OverlayOperationResult
{
    public required IoStatus Status { get; init; }

    /// <summary>Guest bytes looked at (the whole virtual disk when the run completed).</summary>
    public long BytesExamined { get; init; }

    /// <summary>Bytes this run wrote: into the overlay (hydrate, rebase) or into the base (commit).</summary>
    public long BytesCopied { get; init; }

    /// <summary>Why the operation failed, for an operator; null on success.</summary>
    public string? Error { get; init; }

    public bool Succeeded => Status == IoStatus.Ok;

    /// <summary>The result of an operation the format does not have, with why, for an operator.</summary>
    public static OverlayOperationResult Unsupported(string error) => new() { Status = IoStatus.NotSupported, Error = error };

    /// <summary>The result of a request the format refuses as malformed (a size it cannot take), with why.</summary>
    public static OverlayOperationResult Invalid(string error) => new() { Status = IoStatus.OutOfRange, Error = error };

    /// <summary>A failure of the work itself (an I/O error, a failed close), with why.</summary>
    public static OverlayOperationResult Failed(IoStatus status, string error) => new() { Status = status, Error = error };
}

/// <summary>How <see cref="IOverlayImage.Hydrate"/> runs.</summary>
public sealed record OverlayHydrateOptions
{
    /// <summary>
    /// The most bytes read from the base per second; 0 for no limit. The base is usually shared by
    /// many guests, so the limit is on what hydration takes from it.
    /// </summary>
    public long BytesPerSecond { get; init; }

    /// <summary>
    /// Bytes copied between metadata write-backs: an interrupted run loses at most this much work,
    /// and a re-run skips everything recorded.
    /// </summary>
    public long CheckpointBytes { get; init; } = DefaultCheckpointBytes;

    /// <summary>Called with (guest bytes examined, virtual size, bytes copied so far) from the hydrating thread.</summary>
    public Action<OverlayProgress>? Progress { get; init; }

    public const long DefaultCheckpointBytes = 64L * 1024 * 1024;
}

/// <summary>How <see cref="IOverlayImage.Commit"/> runs.</summary>
public sealed record OverlayCommitOptions
{
    /// <summary>Afterwards, empty the overlay so that it reads through to the (updated) base again.</summary>
    public bool EmptyOverlay { get; init; }

    /// <summary>Called with the progress from the committing thread.</summary>
    public Action<OverlayProgress>? Progress { get; init; }
}

/// <summary>
/// Progress of a long overlay operation, in guest bytes whatever the format's unit (clusters, grains).
/// <see cref="BytesCopied"/> is null when the engine does not count it until the end.
/// </summary>
public readonly record struct OverlayProgress(long BytesExamined, long BytesTotal, long? BytesCopied);

/// <summary>How the file-level operations of <see cref="OverlayFormat"/> open an image and its base.</summary>
public sealed record OverlayFileOptions
{
    /// <summary>
    /// Which bases (backing files) named in the image may be opened. Images are untrusted, so nothing
    /// is followed by default.
    /// </summary>
    public BackingFilePolicy BackingPolicy { get; init; } = BackingFilePolicy.None;

    /// <summary>Metadata policy of the image while the operation runs.</summary>
    public MetadataPolicy Policy { get; init; } = MetadataPolicy.Flush;
}

/// <summary>What <see cref="OverlayFormat.Check"/> may repair, as qemu-img check -r.</summary>
public enum OverlayRepair
{
    /// <summary>Only report.</summary>
    None,

    /// <summary>Repair leaked space only; an image with corruptions is reported untouched.</summary>
    Leaks,

    /// <summary>Repair everything that can be repaired.</summary>
    All,
}

/// <summary>What a check of an overlay's metadata found and repaired.</summary>
public sealed record OverlayCheckReport
{
    /// <summary>Inconsistencies that remain and may lose data.</summary>
    public int Corruptions { get; init; }

    /// <summary>Space allocated but unused that remains: wasted, harmless.</summary>
    public int Leaks { get; init; }

    public int CorruptionsFixed { get; init; }

    public int LeaksFixed { get; init; }

    /// <summary>One line per finding and per repair, for an operator.</summary>
    public IReadOnlyList<string> Messages { get; init; } = [];

    /// <summary>The end of the last byte in use in the image file, where the format knows it.</summary>
    public long? ImageEndOffset { get; init; }

    /// <summary>True when something was repaired.</summary>
    public bool Repaired { get; init; }

    public bool IsClean => Corruptions == 0 && Leaks == 0;
}

/// <summary>Where a range of an overlay's virtual disk reads from.</summary>
public enum OverlayExtentKind
{
    /// <summary>Data stored in this image, at <see cref="OverlayExtent.HostOffset"/> of its file.</summary>
    Data,

    /// <summary>Reads as zeros (zero clusters, discarded grains, beyond the base's end).</summary>
    Zero,

    /// <summary>Falls through to the base (backing file).</summary>
    Base,

    /// <summary>A compressed cluster; the host offset is where its compressed data begins.</summary>
    Compressed,

    /// <summary>Invalid entries, which XenDisk does not serve.</summary>
    Unsupported,
}

/// <summary>One run of the virtual disk with one source; <see cref="HostOffset"/> is set for data and compressed runs.</summary>
public readonly record struct OverlayExtent(long Offset, long Length, OverlayExtentKind Kind, long? HostOffset)
{
    /// <summary>Appends, merging with the previous extent when the source continues (data also contiguous in the file).</summary>
    public static void Append(List<OverlayExtent> extents, long offset, long length, OverlayExtentKind kind, long? hostOffset)
    {
        if (extents.Count > 0)
        {
            OverlayExtent last = extents[^1];
            if (last.Kind == kind && last.Offset + last.Length == offset
                && (hostOffset == null || (last.HostOffset != null && kind != OverlayExtentKind.Compressed && last.HostOffset + last.Length == hostOffset)))
            {
                extents[^1] = last with { Length = last.Length + length };
                return;
            }
        }
        extents.Add(new OverlayExtent(offset, length, kind, hostOffset));
    }
}
