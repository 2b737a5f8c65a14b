using XenDisk.Abi;
using XenDisk.Storage;
using XenDisk.Xen;

namespace XenDisk.Backend.DataPlane;

/// <summary>
/// Everything one ring's data plane needs, handed over by the control plane once the frontend's
/// ring details have been read, the ring pages mapped and the event channel bound.
/// Ownership: the control plane keeps ownership of the ring mapping, the event-channel handle and
/// binding, and the disk; it releases them only after <see cref="BlkifRing.StopAsync"/> completed.
/// The event-channel handle is used by this ring's thread alone (one handle per ring, as QEMU does).
/// </summary>
public sealed record RingSetup
{
    /// <summary>For logs: "vbd/5/51712 queue 0".</summary>
    public required string Name { get; init; }

    public required uint FrontendDomainId { get; init; }

    public required int QueueIndex { get; init; }

    public required BlkifProtocol Protocol { get; init; }

    /// <summary>Address of the mapped shared ring (header + slots), <see cref="RingPageCount"/> pages long.</summary>
    public required nint SharedRing { get; init; }

    /// <summary>1, 2, 4, 8 or 16.</summary>
    public required int RingPageCount { get; init; }

    public required IGrantTable Grants { get; init; }

    public required IEventChannels EventChannels { get; init; }

    public required uint LocalPort { get; init; }

    public required IBlockDevice Disk { get; init; }

    public required NegotiatedFeatures Features { get; init; }

    public required DataPlaneOptions Options { get; init; }

    /// <summary>
    /// Where this ring keeps its in-flight record (see InflightRecord), or null for none. A file that
    /// survives the process: a restarted backend redoes the requests its predecessor left in flight.
    /// </summary>
    public string? InflightRecordPath { get; init; }

    /// <summary>What makes this connection this one (domain, device, queue, ring refs, event channel,
    /// protocol): a record written for another connection is discarded, never replayed.</summary>
    public string InflightIdentity { get; init; } = "";
}

/// <summary>What was agreed with the frontend for this device.</summary>
public sealed record NegotiatedFeatures
{
    /// <summary>Both ends offered feature-persistent.</summary>
    public bool PersistentGrants { get; init; }

    /// <summary>The feature-max-indirect-segments we advertised (0: indirect requests are refused).</summary>
    public int MaxIndirectSegments { get; init; }

    /// <summary>mode=r: writes, barriers and discards are refused.</summary>
    public bool ReadOnly { get; init; }

    public bool Discard { get; init; }

    public bool SecureDiscard { get; init; }
}

/// <summary>How ring data reaches storage.</summary>
public enum DataPath
{
    /// <summary>Map the guest's pages and do I/O straight from them (persistent grants keep them mapped).</summary>
    GrantMap,
    /// <summary>Grant-copy through backend-owned bounce buffers: no guest page is ever mapped, so no
    /// mapping can outlive a request (safe with network-backed storage).</summary>
    GrantCopy,
}

/// <summary>How a ring thread runs storage I/O and waits for work.</summary>
public enum IoEngine
{
    /// <summary>io_uring where the host allows it, otherwise <see cref="Threads"/> (said once in the log).</summary>
    Auto,
    /// <summary>io_uring only: a ring whose io_uring cannot be created fails to start.</summary>
    IoUring,
    /// <summary>Blocking calls on the ring's I/O threads; the ring thread waits in poll(2).</summary>
    Threads,
}

/// <summary>Data-plane tuning. Limits are named with the reason for their value.</summary>
public sealed record DataPlaneOptions
{
    /// <summary>
    /// Requests taken off the ring before responses are pushed and the loop looks again: bounds the
    /// latency one busy ring adds to its own responses (Linux blkback processes the whole ring; we
    /// cap it so that responses flow while a deep ring keeps refilling).
    /// </summary>
    public int MaxBatch { get; init; } = 64;

    /// <summary>
    /// Data operations queued before they are handed to the kernel while requests are still being
    /// taken (the io_uring engine; the rest of a batch goes with the loop's one io_uring_enter as
    /// before). The kernel holds one io_uring_enter's block I/O under one plug until the last of it is
    /// built, so a whole ring's worth in one call delays the first request's I/O by the set-up of all the
    /// others and reaches the disk as a burst: at QD32 on a virtio disk, 110 us from a bio's queueing
    /// to its issue and 668 us from issue to completion, against fio's 4 us and 453 us on the same file;
    /// in parts of eight, 27 us and 552 us against fio's 3 us and 572 us (block-layer tracepoints,
    /// docs/BENCHMARKS.md, eleventh round). Eight keeps a busy ring at about 0.2 system calls per
    /// request.
    /// </summary>
    public int SubmissionBatch { get; init; } = 8;

    /// <summary>Persistent-grant LRU size per ring; 1056 is Linux blkback's default (xen_blkif_max_pgrants).</summary>
    public int PersistentGrantCacheSize { get; init; } = 1056;

    /// <summary>Persistent grants unused for this long are unmapped (Linux blkback purges after 60 s).</summary>
    public TimeSpan PersistentGrantIdleExpiry { get; init; } = TimeSpan.FromSeconds(60);

    public DataPath DataPath { get; init; } = DataPath.GrantMap;

    /// <summary>
    /// io_uring (the default where available) lets the ring thread submit a whole batch and sleep until
    /// a guest kick or a completion in one system call; the thread engine is the fallback.
    /// </summary>
    public IoEngine IoEngine { get; init; } = IoEngine.Auto;

    /// <summary>Threads per ring that run blocking storage calls: all I/O with the thread engine (this is
    /// then the ring's storage queue depth), and the slow path (discard, overlay allocation) with io_uring.
    /// Ignored for devices that complete inline.</summary>
    public int IoThreadsPerRing { get; init; } = 8;

    /// <summary>
    /// Bounce pages per ring for <see cref="DataPath.GrantCopy"/>; 0 sizes them automatically: one full
    /// direct request per ring slot, at most <see cref="DefaultBounceBufferPages"/>. Never fewer than the
    /// largest negotiated request needs, so that a lone request can always run. When they run out the
    /// ring stops taking requests until some complete (back-pressure, counted), never allocates more.
    /// </summary>
    public int BounceBufferPages { get; init; }

    /// <summary>Cap of the automatic bounce-buffer sizing: 512 pages, 2 MiB per ring.</summary>
    public const int DefaultBounceBufferPages = 512;

    /// <summary>Longest <see cref="PersistentGrantIdleExpiry"/> accepted: a day is already "never" for a cache.</summary>
    public static readonly TimeSpan MaxPersistentGrantIdleExpiry = TimeSpan.FromDays(1);

    /// <summary>Most I/O threads per ring: beyond this a ring's queue depth is better raised by more rings.</summary>
    public const int MaxIoThreadsPerRing = 256;

    /// <summary>The largest ring's slots (order 4, 64-bit layout): a part this large is a whole batch in one call.</summary>
    public const int MaxSubmissionBatch = 512;

    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    /// <summary>Throws <see cref="ArgumentException"/> for options the data plane cannot run with.</summary>
    public void Validate()
    {
        if (MaxBatch < 1)
        {
            throw new ArgumentException($"MaxBatch must be at least 1 (got {MaxBatch}).");
        }

        if (SubmissionBatch is < 1 or > MaxSubmissionBatch)
        {
            throw new ArgumentException($"SubmissionBatch must be between 1 and {MaxSubmissionBatch} (got {SubmissionBatch}).");
        }

        if (PersistentGrantCacheSize < 0)
        {
            throw new ArgumentException($"PersistentGrantCacheSize must not be negative (got {PersistentGrantCacheSize}).");
        }

        if (PersistentGrantIdleExpiry <= TimeSpan.Zero || PersistentGrantIdleExpiry > MaxPersistentGrantIdleExpiry)
        {
            throw new ArgumentException($"PersistentGrantIdleExpiry must be positive and at most {MaxPersistentGrantIdleExpiry} (got {PersistentGrantIdleExpiry}).");
        }

        if (IoThreadsPerRing is < 1 or > MaxIoThreadsPerRing)
        {
            throw new ArgumentException($"IoThreadsPerRing must be between 1 and {MaxIoThreadsPerRing} (got {IoThreadsPerRing}).");
        }

        if (BounceBufferPages < 0)
        {
            throw new ArgumentException($"BounceBufferPages must not be negative (got {BounceBufferPages}).");
        }

        if (!Enum.IsDefined(IoEngine))
        {
            throw new ArgumentException($"Unknown IoEngine {IoEngine}.");
        }

        if (!Enum.IsDefined(DataPath))
        {
            throw new ArgumentException($"Unknown DataPath {DataPath}.");
        }

        ArgumentNullException.ThrowIfNull(TimeProvider);
    }

    /// <summary>Bounce pages for a ring of <paramref name="entries"/> slots whose largest request has <paramref name="maxSegments"/> segments.</summary>
    public int BounceBufferPagesFor(int entries, int maxSegments)
    {
        int pages = BounceBufferPages > 0
            ? BounceBufferPages
            : Math.Min(entries * BlkifLimits.MaxSegmentsPerRequest, DefaultBounceBufferPages);
        return Math.Max(pages, maxSegments);
    }
}
