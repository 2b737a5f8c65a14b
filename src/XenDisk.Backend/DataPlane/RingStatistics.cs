using System.Numerics;

namespace XenDisk.Backend.DataPlane;

/// <summary>The kinds of work a ring counts separately (an indirect request counts as its read or write).</summary>
public enum RingOperation
{
    Read = 0,
    Write = 1,
    Flush = 2,
    Barrier = 3,
    Discard = 4,
}

/// <summary>
/// Told of each request and batch a ring counts, on the ring thread, as it counts them: the hook through
/// which telemetry records request durations into its own histograms. Runs inside the ring loop, so an
/// implementation must not block, throw or allocate.
/// </summary>
public interface IRingStatisticsObserver
{
    /// <summary>
    /// Called once, on the ring thread, before the first request or batch the observer is told of, with
    /// the statistics as they are at that moment: what was counted before the observer arrived, which
    /// it may replay. Nothing else writes them while this runs, so they are exact.
    /// </summary>
    void Attached(RingStatistics statistics);

    /// <summary>A request of this kind was answered after <paramref name="nanoseconds"/> on the ring.</summary>
    void RequestCompleted(RingOperation operation, bool succeeded, long nanoseconds);

    /// <summary>The ring took a batch of <paramref name="size"/> requests.</summary>
    void BatchTaken(int size);
}

/// <summary>
/// Counters of one ring, readable from any thread while the ring runs. The ring thread is the only
/// writer of every counter (single-writer: it publishes with <see cref="Volatile.Write(ref long, long)"/>,
/// readers use <see cref="Volatile.Read(ref long)"/>), so recording costs no interlocked operation.
/// A telemetry exporter sums these over the rings of a device.
/// </summary>
public sealed class RingStatistics
{
    /// <summary>Number of values of <see cref="RingOperation"/>.</summary>
    public const int OperationCount = 5;

    /// <summary>Batch sizes are counted in power-of-two buckets: 1, 2, 3-4, 5-8, ..., the last one open-ended.</summary>
    public const int BatchSizeBucketCount = 17;

    private readonly long[] _requests = new long[OperationCount];
    private readonly long[] _bytes = new long[OperationCount];
    private readonly LatencyHistogram[] _latency = new LatencyHistogram[OperationCount];
    private readonly long[] _batchSizes = new long[BatchSizeBucketCount];

    private long _guestErrors;
    private long _storageErrors;
    private long _unsupported;
    private long _batches;
    private long _notificationsSent;
    private long _notificationsSuppressed;
    private long _backPressureEvents;
    private long _fastPathRequests;
    private long _engineCalls;
    private long _ioThreadsStarted;
    private long _grantMaps;
    private long _grantUnmaps;
    private long _grantUnmapFailures;
    private long _grantCopySegments;
    private long _persistentHits;
    private long _persistentMisses;
    private long _persistentEvictions;
    private long _persistentExpirations;
    private long _persistentMapped;
    private long _inFlight;
    private long _largestRequestBytes;
    private int _halted;

    // Set by any thread (Observe); adopted by the ring thread at its next request or batch, which is
    // the only place that calls the observer: so the observer never races the counters it replays.
    private IRingStatisticsObserver? _offeredObserver;
    private IRingStatisticsObserver? _observer;

    public RingStatistics()
    {
        for (int i = 0; i < OperationCount; i++)
        {
            _latency[i] = new LatencyHistogram();
        }
    }

    /// <summary>Requests of this kind that passed validation and were executed (whatever their outcome).</summary>
    public long Requests(RingOperation operation) => Volatile.Read(ref _requests[(int)operation]);

    /// <summary>Bytes moved (read, written or discarded) by requests of this kind that succeeded.</summary>
    public long Bytes(RingOperation operation) => Volatile.Read(ref _bytes[(int)operation]);

    /// <summary>Time from taking a request off the ring to writing its response.</summary>
    public LatencyHistogram Latency(RingOperation operation) => _latency[(int)operation];

    /// <summary>Requests answered BLKIF_RSP_ERROR because of the guest: malformed, out of range, a bad grant.</summary>
    public long GuestErrors => Volatile.Read(ref _guestErrors);

    /// <summary>Requests answered BLKIF_RSP_ERROR because the storage failed.</summary>
    public long StorageErrors => Volatile.Read(ref _storageErrors);

    /// <summary>Requests answered BLKIF_RSP_EOPNOTSUPP.</summary>
    public long Unsupported => Volatile.Read(ref _unsupported);

    /// <summary>Batches of requests taken off the ring (a batch ends when the ring is empty or Options.MaxBatch is reached).</summary>
    public long Batches => Volatile.Read(ref _batches);

    /// <summary>Batches whose size fell in <paramref name="bucket"/>; see <see cref="BatchSizeBucketUpperBound"/>.</summary>
    public long BatchSizeCount(int bucket) => Volatile.Read(ref _batchSizes[bucket]);

    /// <summary>The largest batch size counted in <paramref name="bucket"/> (inclusive); the last bucket is open-ended.</summary>
    public static int BatchSizeBucketUpperBound(int bucket) =>
        bucket >= BatchSizeBucketCount - 1 ? int.MaxValue : 1 << bucket;

    /// <summary>Event-channel notifications sent to the frontend after pushing responses.</summary>
    public long NotificationsSent => Volatile.Read(ref _notificationsSent);

    /// <summary>Pushes of responses that needed no notification because the frontend had not asked for one (rsp_event).</summary>
    public long NotificationsSuppressed => Volatile.Read(ref _notificationsSuppressed);

    /// <summary>Times the ring stopped taking requests because a resource (bounce buffers) was exhausted.</summary>
    public long BackPressureEvents => Volatile.Read(ref _backPressureEvents);

    /// <summary>Requests whose data the ring thread moved itself through its io_uring (the remap fast
    /// path), rather than handing them to an I/O thread.</summary>
    public long FastPathRequests => Volatile.Read(ref _fastPathRequests);

    /// <summary>io_uring_enter calls the ring thread made (each submits a batch, and most also sleep
    /// until the next kick or completion): with the notifications, the ring thread's system calls.</summary>
    public long EngineCalls => Volatile.Read(ref _engineCalls);

    /// <summary>The ring's I/O threads started so far: they start as slow-path requests need them, up
    /// to DataPlaneOptions.IoThreadsPerRing, so a ring whose requests all take the fast path has none.</summary>
    public long IoThreadsStarted => Volatile.Read(ref _ioThreadsStarted);

    /// <summary>MapGrantRefs calls that succeeded (data pages, indirect pages, persistent grants).</summary>
    public long GrantMaps => Volatile.Read(ref _grantMaps);

    /// <summary>Unmap calls made for mappings this ring created.</summary>
    public long GrantUnmaps => Volatile.Read(ref _grantUnmaps);

    /// <summary>Unmap calls that reported an error.</summary>
    public long GrantUnmapFailures => Volatile.Read(ref _grantUnmapFailures);

    /// <summary>Grant-copy segments issued (data and indirect pages).</summary>
    public long GrantCopySegments => Volatile.Read(ref _grantCopySegments);

    public long PersistentGrantHits => Volatile.Read(ref _persistentHits);

    public long PersistentGrantMisses => Volatile.Read(ref _persistentMisses);

    /// <summary>Persistent grants unmapped to make room for another (least recently used first).</summary>
    public long PersistentGrantEvictions => Volatile.Read(ref _persistentEvictions);

    /// <summary>Persistent grants unmapped because they were idle longer than Options.PersistentGrantIdleExpiry.</summary>
    public long PersistentGrantExpirations => Volatile.Read(ref _persistentExpirations);

    /// <summary>Persistent grants currently mapped.</summary>
    public long PersistentGrantsMapped => Volatile.Read(ref _persistentMapped);

    /// <summary>Requests taken off the ring whose response has not been written yet.</summary>
    public long InFlight => Volatile.Read(ref _inFlight);

    /// <summary>The ring was halted because the frontend broke the ring protocol.</summary>
    public bool Halted => Volatile.Read(ref _halted) != 0;

    /// <summary>
    /// The most bytes one executed request carried. blkif has no frontend key saying whether it uses
    /// indirect requests (blkfront takes min(our offer, its own limit) silently), so this is what shows
    /// it: a request of more than BLKIF_MAX_SEGMENTS_PER_REQUEST pages can only have been indirect.
    /// </summary>
    public long LargestRequestBytes => Volatile.Read(ref _largestRequestBytes);

    /// <summary>An observer was offered (<see cref="Observe"/>), whether or not the ring adopted it yet.</summary>
    public bool IsObserved => Volatile.Read(ref _offeredObserver) is not null;

    /// <summary>
    /// Offers <paramref name="observer"/> to the ring: from its next request or batch on, the ring thread
    /// calls <see cref="IRingStatisticsObserver.Attached"/> once and then reports every request and batch
    /// to it. One observer per ring: false when another was offered first.
    /// </summary>
    public bool Observe(IRingStatisticsObserver observer)
    {
        ArgumentNullException.ThrowIfNull(observer);
        return Interlocked.CompareExchange(ref _offeredObserver, observer, null) is null;
    }

    // Recording: ring thread only.

    internal void RecordCompleted(RingOperation operation, long bytes, bool succeeded, long nanoseconds)
    {
        IRingStatisticsObserver? observer = _observer ?? AdoptObserver();
        Increment(ref _requests[(int)operation]);
        if (bytes > _largestRequestBytes)
        {
            Volatile.Write(ref _largestRequestBytes, bytes);
        }

        if (succeeded)
        {
            Add(ref _bytes[(int)operation], bytes);
        }

        _latency[(int)operation].Record(nanoseconds);
        observer?.RequestCompleted(operation, succeeded, nanoseconds);
    }

    internal void RecordBatch(int size)
    {
        IRingStatisticsObserver? observer = _observer ?? AdoptObserver();
        Increment(ref _batches);
        int bucket = size <= 1 ? 0 : 32 - BitOperations.LeadingZeroCount((uint)size - 1);
        Increment(ref _batchSizes[Math.Min(bucket, BatchSizeBucketCount - 1)]);
        observer?.BatchTaken(size);
    }

    /// <summary>Ring thread: takes up an offered observer before counting anything more, so that what it
    /// replays in Attached and what it is told afterwards add up to exactly what the ring counted.</summary>
    private IRingStatisticsObserver? AdoptObserver()
    {
        IRingStatisticsObserver? offered = Volatile.Read(ref _offeredObserver);
        if (offered is not null)
        {
            offered.Attached(this);
            _observer = offered;
        }

        return offered;
    }

    internal void GuestError() => Increment(ref _guestErrors);

    internal void StorageError() => Increment(ref _storageErrors);

    internal void UnsupportedRequest() => Increment(ref _unsupported);

    internal void NotificationSent() => Increment(ref _notificationsSent);

    internal void NotificationSuppressed() => Increment(ref _notificationsSuppressed);

    internal void BackPressure() => Increment(ref _backPressureEvents);

    internal void FastPath() => Increment(ref _fastPathRequests);

    internal void SetEngineCalls(long count) => Volatile.Write(ref _engineCalls, count);

    internal void IoThreadStarted() => Increment(ref _ioThreadsStarted);

    internal void GrantMapped() => Increment(ref _grantMaps);

    internal void GrantUnmapped(bool succeeded)
    {
        Increment(ref _grantUnmaps);
        if (!succeeded)
        {
            Increment(ref _grantUnmapFailures);
        }
    }

    internal void GrantCopied(int segments) => Add(ref _grantCopySegments, segments);

    internal void PersistentHit() => Increment(ref _persistentHits);

    internal void PersistentMiss() => Increment(ref _persistentMisses);

    internal void PersistentEvicted() => Increment(ref _persistentEvictions);

    internal void PersistentExpired() => Increment(ref _persistentExpirations);

    internal void SetPersistentMapped(int count) => Volatile.Write(ref _persistentMapped, count);

    internal void SetInFlight(int count) => Volatile.Write(ref _inFlight, count);

    internal void SetHalted() => Volatile.Write(ref _halted, 1);

    private static void Increment(ref long counter) => Volatile.Write(ref counter, counter + 1);

    private static void Add(ref long counter, long value) => Volatile.Write(ref counter, counter + value);
}

/// <summary>
/// A latency histogram with fixed, log-spaced buckets: everything below 1024 ns in bucket 0, then
/// four buckets per power of two (a bucket is at most 25 % wide relative to its lower bound) up to
/// 2^40 ns (about 18 minutes), then one open-ended bucket. The bounds never change, so recording is
/// two bit operations and a counter increment, and exporters can name the bounds once.
/// Single writer (the ring thread); any thread may read.
/// </summary>
public sealed class LatencyHistogram
{
    private const int FirstOctave = 10;          // 2^10 ns = 1.024 µs: below that every request is "instant"
    private const int Octaves = 30;              // up to 2^40 ns
    private const int SubBucketBits = 2;         // 4 sub-buckets per octave
    private const int SubBuckets = 1 << SubBucketBits;

    /// <summary>Bucket 0, four per octave, and the overflow bucket.</summary>
    public const int BucketCount = 1 + (Octaves * SubBuckets) + 1;

    private readonly long[] _counts = new long[BucketCount];
    private long _count;
    private long _sumNanoseconds;

    public long Count => Volatile.Read(ref _count);

    public long SumNanoseconds => Volatile.Read(ref _sumNanoseconds);

    public long BucketCountAt(int bucket) => Volatile.Read(ref _counts[bucket]);

    /// <summary>Copies the bucket counts into <paramref name="destination"/> (at least <see cref="BucketCount"/> long).</summary>
    public void CopyCountsTo(Span<long> destination)
    {
        for (int i = 0; i < BucketCount; i++)
        {
            destination[i] = Volatile.Read(ref _counts[i]);
        }
    }

    /// <summary>Exclusive upper bound of <paramref name="bucket"/> in nanoseconds; <see cref="long.MaxValue"/> for the last.</summary>
    public static long UpperBoundNanoseconds(int bucket)
    {
        if (bucket <= 0)
        {
            return 1L << FirstOctave;
        }

        if (bucket >= BucketCount - 1)
        {
            return long.MaxValue;
        }

        int octave = FirstOctave + ((bucket - 1) >> SubBucketBits);
        int sub = (bucket - 1) & (SubBuckets - 1);
        return (1L << (octave - SubBucketBits)) * (SubBuckets + sub + 1);
    }

    /// <summary>The bucket a duration falls in.</summary>
    public static int BucketOf(long nanoseconds)
    {
        if (nanoseconds < (1L << FirstOctave))
        {
            return 0;
        }

        int octave = BitOperations.Log2((ulong)nanoseconds);
        if (octave >= FirstOctave + Octaves)
        {
            return BucketCount - 1;
        }

        int sub = (int)(nanoseconds >> (octave - SubBucketBits)) & (SubBuckets - 1);
        return 1 + ((octave - FirstOctave) << SubBucketBits) + sub;
    }

    internal void Record(long nanoseconds)
    {
        if (nanoseconds < 0)
        {
            nanoseconds = 0;
        }

        int bucket = BucketOf(nanoseconds);
        Volatile.Write(ref _counts[bucket], _counts[bucket] + 1);
        Volatile.Write(ref _sumNanoseconds, _sumNanoseconds + nanoseconds);
        Volatile.Write(ref _count, _count + 1);
    }
}
