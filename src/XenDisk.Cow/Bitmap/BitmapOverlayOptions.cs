using XenDisk.Cow.Policies;

namespace XenDisk.Cow.Bitmap;

/// <summary>How <see cref="BitmapOverlay.Create"/> and <see cref="BitmapOverlay.Open"/> treat an overlay.</summary>
public sealed record BitmapOverlayOptions
{
    /// <summary>
    /// When the map reaches the disk (see <see cref="MetadataPolicy"/> and <see cref="BitmapOverlay"/>):
    /// Flush by default. Transient is accepted only by <see cref="BitmapOverlay.Create"/>: reopening a
    /// transient overlay would find its map lost.
    /// </summary>
    public MetadataPolicy Policy { get; init; } = MetadataPolicy.Flush;

    /// <summary>Open read-only (also forced by a read-only CoW device): nothing is written, not even the dirty flag.</summary>
    public bool ReadOnly { get; init; }

    /// <summary>Whether disposing the overlay disposes the CoW and base devices too.</summary>
    public bool OwnsDevices { get; init; } = true;

    /// <summary>Which stored base names <see cref="BitmapOverlay.OpenWithStoredBase"/> may follow.</summary>
    public BackingFilePolicy BackingPolicy { get; init; } = BackingFilePolicy.None;

    /// <summary>
    /// Pass whole-grain discards on to the CoW device's data area, freeing space on thin storage.
    /// Done only when that device promises that discarded ranges read back as zeros
    /// (<see cref="XenDisk.Storage.BlockDeviceInfo.DiscardZeroes"/>): a crash before the map says
    /// "discarded" then shows zeros, which the guest accepts for an unflushed discard, never garbage.
    /// </summary>
    public bool PassDiscardsDown { get; init; } = true;

    /// <summary>Copy-up buffers (one grain each): copy-ups in flight beyond this wait for one (back-pressure).</summary>
    public int CopyUpBufferCount { get; init; } = DefaultCopyUpBufferCount;

    /// <summary>Two per request in flight (head and tail grain) for a ring of 32 requests.</summary>
    public const int DefaultCopyUpBufferCount = 64;
}

/// <summary>What <see cref="BitmapOverlay.Create"/> writes.</summary>
public sealed record BitmapCreateOptions
{
    /// <summary>The unit of copy-on-write: a power of two from 512 B to 64 KiB, 4 KiB by default (one guest page).</summary>
    public int GrainSize { get; init; } = BitmapFormat.DefaultGrainSize;

    /// <summary>The virtual disk size; 0 (the default) means the base's size. Never smaller than the base.</summary>
    public long VirtualSize { get; init; }

    /// <summary>The base's name stored in the header (informational, at most 256 UTF-8 bytes).</summary>
    public string BaseName { get; init; } = "";
}

/// <summary>Progress of <see cref="BitmapOverlay.Hydrate"/> or <see cref="BitmapOverlay.Commit"/>.</summary>
/// <param name="GrainsDone">Grains examined so far.</param>
/// <param name="GrainCount">All grains of the disk.</param>
/// <param name="BytesCopied">Bytes copied so far by this run.</param>
public readonly record struct GrainProgress(long GrainsDone, long GrainCount, long BytesCopied);

/// <summary>How <see cref="BitmapOverlay.Hydrate"/> runs.</summary>
public sealed record HydrateOptions
{
    /// <summary>The most bytes copied per second; 0 for no limit.</summary>
    public long BytesPerSecond { get; init; }

    /// <summary>Called after each batch of grains (from the hydrating thread).</summary>
    public Action<GrainProgress>? Progress { get; init; }

    /// <summary>
    /// How many bytes are copied between map write-backs: an interrupted run loses at most this much
    /// work, and a re-run copies only what the map does not yet record as copied.
    /// </summary>
    public long CheckpointBytes { get; init; } = 64L * 1024 * 1024;
}

/// <summary>How <see cref="BitmapOverlay.Commit"/> runs.</summary>
public sealed record CommitOptions
{
    /// <summary>Afterwards, mark every grain as the base's again (the overlay becomes empty).</summary>
    public bool ClearOverlay { get; init; }

    /// <summary>Called after each batch of grains (from the committing thread).</summary>
    public Action<GrainProgress>? Progress { get; init; }
}
