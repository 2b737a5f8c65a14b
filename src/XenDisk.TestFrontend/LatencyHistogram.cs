using System.Diagnostics;

namespace XenDisk.TestFrontend;

/// <summary>
/// Request latencies in fixed power-of-two buckets from 1 µs to about 1 s, plus one overflow
/// bucket: recording is an index computation and an increment, nothing allocates.
/// Not thread-safe: one recorder (a queue's completion thread).
/// </summary>
public sealed class LatencyHistogram
{
    /// <summary>Buckets with an upper bound of 2^0 .. 2^20 µs; the last one takes everything slower.</summary>
    public const int BoundedBuckets = 21;

    private readonly long[] _counts = new long[BoundedBuckets + 1];

    /// <summary>Counts per bucket; bucket i holds latencies up to <see cref="UpperBound"/>(i).</summary>
    public IReadOnlyList<long> Counts => _counts;

    public long TotalCount { get; private set; }

    /// <summary>The slowest latency recorded, exactly.</summary>
    public TimeSpan Max => Stopwatch.GetElapsedTime(0, _maxTicks);

    private long _maxTicks;

    /// <summary>The bucket's upper bound (TimeSpan.MaxValue for the overflow bucket).</summary>
    public static TimeSpan UpperBound(int bucket) =>
        bucket >= BoundedBuckets ? TimeSpan.MaxValue : TimeSpan.FromMicroseconds(1L << bucket);

    public void Record(long stopwatchTicks)
    {
        long microseconds = stopwatchTicks * 1_000_000 / Stopwatch.Frequency;
        int bucket = microseconds <= 1 ? 0 : 64 - (int)long.LeadingZeroCount(microseconds - 1);
        _counts[Math.Min(bucket, BoundedBuckets)]++;
        TotalCount++;
        _maxTicks = Math.Max(_maxTicks, stopwatchTicks);
    }

    /// <summary>Adds <paramref name="other"/>'s latencies to these (once the recorders are done).</summary>
    public void Add(LatencyHistogram other)
    {
        ArgumentNullException.ThrowIfNull(other);
        for (int i = 0; i < _counts.Length; i++)
        {
            _counts[i] += other._counts[i];
        }

        TotalCount += other.TotalCount;
        _maxTicks = Math.Max(_maxTicks, other._maxTicks);
    }

    /// <summary>The upper bound of the bucket holding the <paramref name="percentile"/>-th latency (0-100).</summary>
    public TimeSpan Percentile(double percentile)
    {
        if (TotalCount == 0)
        {
            return TimeSpan.Zero;
        }

        long rank = (long)Math.Ceiling(TotalCount * Math.Clamp(percentile, 0, 100) / 100.0);
        long seen = 0;
        for (int i = 0; i < _counts.Length; i++)
        {
            seen += _counts[i];
            if (seen >= Math.Max(rank, 1))
            {
                return UpperBound(i);
            }
        }

        return TimeSpan.MaxValue;
    }
}
