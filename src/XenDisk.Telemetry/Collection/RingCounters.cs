using XenDisk.Backend.DataPlane;

namespace XenDisk.Telemetry.Collection;

/// <summary>
/// A copy of one ring's <see cref="RingStatistics"/> taken at one moment, or the sum of several rings'
/// copies. Cumulative fields only grow while a ring runs; <see cref="InFlight"/>,
/// <see cref="PersistentGrantsMapped"/> and <see cref="Halted"/> are momentary values.
/// Not thread-safe: built and read by the collector under its lock, then only read.
/// </summary>
public sealed class RingCounters
{
    public long[] Requests { get; } = new long[RingStatistics.OperationCount];

    public long[] Bytes { get; } = new long[RingStatistics.OperationCount];

    /// <summary>Per operation: the data plane's latency bucket counts (<see cref="LatencyHistogram.BucketCount"/> each).</summary>
    public long[][] LatencyBuckets { get; } = NewLatencyBuckets();

    public long[] LatencyCount { get; } = new long[RingStatistics.OperationCount];

    public long[] LatencySumNanoseconds { get; } = new long[RingStatistics.OperationCount];

    public long[] BatchSizeBuckets { get; } = new long[RingStatistics.BatchSizeBucketCount];

    public long GuestErrors { get; set; }

    public long StorageErrors { get; set; }

    public long Unsupported { get; set; }

    public long Batches { get; set; }

    public long NotificationsSent { get; set; }

    public long NotificationsSuppressed { get; set; }

    public long BackPressureEvents { get; set; }

    public long FastPathRequests { get; set; }

    public long EngineCalls { get; set; }

    public long IoThreadsStarted { get; set; }

    public long GrantMaps { get; set; }

    public long GrantUnmaps { get; set; }

    public long GrantUnmapFailures { get; set; }

    public long GrantCopySegments { get; set; }

    public long PersistentGrantHits { get; set; }

    public long PersistentGrantMisses { get; set; }

    public long PersistentGrantEvictions { get; set; }

    public long PersistentGrantExpirations { get; set; }

    public long PersistentGrantsMapped { get; set; }

    public long InFlight { get; set; }

    /// <summary>The largest request any of the rings executed (kept across reconnects, like the counters).</summary>
    public long LargestRequestBytes { get; set; }

    public bool Halted { get; set; }

    public long TotalRequests => Requests.Sum();

    /// <summary>Reads every counter of <paramref name="statistics"/> (each read is atomic; the set is not a
    /// transaction, which only matters for a ring that is running, and the next read catches up).</summary>
    public static RingCounters Read(RingStatistics statistics)
    {
        ArgumentNullException.ThrowIfNull(statistics);
        var counters = new RingCounters();
        for (int i = 0; i < RingStatistics.OperationCount; i++)
        {
            var operation = (RingOperation)i;
            counters.Requests[i] = statistics.Requests(operation);
            counters.Bytes[i] = statistics.Bytes(operation);
            LatencyHistogram latency = statistics.Latency(operation);
            latency.CopyCountsTo(counters.LatencyBuckets[i]);
            counters.LatencyCount[i] = latency.Count;
            counters.LatencySumNanoseconds[i] = latency.SumNanoseconds;
        }

        for (int b = 0; b < RingStatistics.BatchSizeBucketCount; b++)
        {
            counters.BatchSizeBuckets[b] = statistics.BatchSizeCount(b);
        }

        counters.GuestErrors = statistics.GuestErrors;
        counters.StorageErrors = statistics.StorageErrors;
        counters.Unsupported = statistics.Unsupported;
        counters.Batches = statistics.Batches;
        counters.NotificationsSent = statistics.NotificationsSent;
        counters.NotificationsSuppressed = statistics.NotificationsSuppressed;
        counters.BackPressureEvents = statistics.BackPressureEvents;
        counters.FastPathRequests = statistics.FastPathRequests;
        counters.EngineCalls = statistics.EngineCalls;
        counters.IoThreadsStarted = statistics.IoThreadsStarted;
        counters.GrantMaps = statistics.GrantMaps;
        counters.GrantUnmaps = statistics.GrantUnmaps;
        counters.GrantUnmapFailures = statistics.GrantUnmapFailures;
        counters.GrantCopySegments = statistics.GrantCopySegments;
        counters.PersistentGrantHits = statistics.PersistentGrantHits;
        counters.PersistentGrantMisses = statistics.PersistentGrantMisses;
        counters.PersistentGrantEvictions = statistics.PersistentGrantEvictions;
        counters.PersistentGrantExpirations = statistics.PersistentGrantExpirations;
        counters.PersistentGrantsMapped = statistics.PersistentGrantsMapped;
        counters.InFlight = statistics.InFlight;
        counters.LargestRequestBytes = statistics.LargestRequestBytes;
        counters.Halted = statistics.Halted;
        return counters;
    }

    /// <summary>Adds <paramref name="other"/>'s cumulative counters; momentary values are added only when
    /// <paramref name="includeMomentary"/> (a stopped ring has nothing in flight and nothing mapped).</summary>
    public void Add(RingCounters other, bool includeMomentary)
    {
        ArgumentNullException.ThrowIfNull(other);
        for (int i = 0; i < RingStatistics.OperationCount; i++)
        {
            Requests[i] += other.Requests[i];
            Bytes[i] += other.Bytes[i];
            LatencyCount[i] += other.LatencyCount[i];
            LatencySumNanoseconds[i] += other.LatencySumNanoseconds[i];
            long[] mine = LatencyBuckets[i];
            long[] theirs = other.LatencyBuckets[i];
            for (int b = 0; b < mine.Length; b++)
            {
                mine[b] += theirs[b];
            }
        }

        for (int b = 0; b < BatchSizeBuckets.Length; b++)
        {
            BatchSizeBuckets[b] += other.BatchSizeBuckets[b];
        }

        GuestErrors += other.GuestErrors;
        StorageErrors += other.StorageErrors;
        Unsupported += other.Unsupported;
        Batches += other.Batches;
        NotificationsSent += other.NotificationsSent;
        NotificationsSuppressed += other.NotificationsSuppressed;
        BackPressureEvents += other.BackPressureEvents;
        FastPathRequests += other.FastPathRequests;
        EngineCalls += other.EngineCalls;
        GrantMaps += other.GrantMaps;
        GrantUnmaps += other.GrantUnmaps;
        GrantUnmapFailures += other.GrantUnmapFailures;
        GrantCopySegments += other.GrantCopySegments;
        PersistentGrantHits += other.PersistentGrantHits;
        PersistentGrantMisses += other.PersistentGrantMisses;
        PersistentGrantEvictions += other.PersistentGrantEvictions;
        PersistentGrantExpirations += other.PersistentGrantExpirations;
        LargestRequestBytes = Math.Max(LargestRequestBytes, other.LargestRequestBytes);
        if (includeMomentary)
        {
            PersistentGrantsMapped += other.PersistentGrantsMapped;
            InFlight += other.InFlight;
            Halted |= other.Halted;
        }
    }

    /// <summary>A copy of the cumulative counters (momentary values zero).</summary>
    public RingCounters CloneCumulative()
    {
        var copy = new RingCounters();
        copy.Add(this, includeMomentary: false);
        return copy;
    }

    private static long[][] NewLatencyBuckets()
    {
        var buckets = new long[RingStatistics.OperationCount][];
        for (int i = 0; i < buckets.Length; i++)
        {
            buckets[i] = new long[LatencyHistogram.BucketCount];
        }

        return buckets;
    }
}
