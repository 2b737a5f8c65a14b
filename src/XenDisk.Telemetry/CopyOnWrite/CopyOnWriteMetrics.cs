namespace XenDisk.Telemetry.CopyOnWrite;

/// <summary>
/// What the copy-on-write engine reports for one overlay image, read at export time like the ring
/// counters (the engine keeps plain counters; telemetry reads them). Cumulative: every count only grows
/// while the image is open.
/// </summary>
public sealed record CopyOnWriteImageCounters
{
    /// <summary>The overlay image (its path); becomes the xendisk.image attribute.</summary>
    public required string Image { get; init; }

    /// <summary>Clusters (or blocks) copied up from the base before a partial write.</summary>
    public long CopyUps { get; init; }

    /// <summary>Bytes read from the base and written into the overlay by copy-ups and hydration.</summary>
    public long CopiedBytes { get; init; }

    /// <summary>Metadata writes: L1/L2 tables, refcounts, bitmap blocks.</summary>
    public long MetadataWrites { get; init; }

    /// <summary>Flushes issued to make metadata durable.</summary>
    public long MetadataFlushes { get; init; }

    /// <summary>Metadata-cache lookups answered from memory.</summary>
    public long CacheHits { get; init; }

    /// <summary>Metadata-cache lookups that had to read the image.</summary>
    public long CacheMisses { get; init; }

    /// <summary>Bytes the overlay currently occupies (momentary).</summary>
    public long OverlayAllocatedBytes { get; init; }

    /// <summary>Fraction (0..1) of the image's clusters present in the overlay, when the engine hydrates it; null otherwise.</summary>
    public double? HydrationProgress { get; init; }
}

/// <summary>The copy-on-write engine's side of the hook: registered once with <see cref="XenDiskMetrics.RegisterCopyOnWrite"/>.</summary>
public interface ICopyOnWriteMetricsSource
{
    /// <summary>The counters of every open overlay, read at export time; must be cheap and thread-safe.</summary>
    IReadOnlyList<CopyOnWriteImageCounters> GetImages();
}
