using XenDisk.Backend.DataPlane;

namespace XenDisk.Backend.Tests.DataPlane;

public class RingStatisticsTests
{
    [Theory]
    [InlineData(0L, 0)]
    [InlineData(1023L, 0)]
    [InlineData(1024L, 1)]
    [InlineData(1279L, 1)]
    [InlineData(1280L, 2)]
    [InlineData(2047L, 4)]
    [InlineData(2048L, 5)]
    [InlineData(1_000_000L, 40)]
    [InlineData(long.MaxValue, LatencyHistogram.BucketCount - 1)]
    public void Latency_buckets_are_log_spaced_with_four_per_octave(long nanoseconds, int bucket)
    {
        Assert.Equal(bucket, LatencyHistogram.BucketOf(nanoseconds));
    }

    [Fact]
    public void Every_value_falls_below_its_buckets_upper_bound_and_at_or_above_the_previous_one()
    {
        var random = new Random(7);
        for (int i = 0; i < 10_000; i++)
        {
            long value = (long)(Math.Pow(2, random.NextDouble() * 42) - 1);
            int bucket = LatencyHistogram.BucketOf(value);
            Assert.True(value < LatencyHistogram.UpperBoundNanoseconds(bucket), $"{value} in bucket {bucket}");
            if (bucket > 0)
            {
                Assert.True(value >= LatencyHistogram.UpperBoundNanoseconds(bucket - 1), $"{value} in bucket {bucket}");
            }
        }

        // Resolution: at microsecond scale a bucket is at most 25 % wide.
        for (int bucket = 2; bucket < LatencyHistogram.BucketCount - 1; bucket++)
        {
            long lower = LatencyHistogram.UpperBoundNanoseconds(bucket - 1);
            long upper = LatencyHistogram.UpperBoundNanoseconds(bucket);
            Assert.True(upper > lower);
            Assert.True(upper - lower <= lower / 4, $"bucket {bucket}: {lower}..{upper}");
        }
    }

    [Fact]
    public void Recording_updates_counts_sums_and_batches()
    {
        var statistics = new RingStatistics();
        statistics.RecordCompleted(RingOperation.Read, 4096, succeeded: true, 1500);
        statistics.RecordCompleted(RingOperation.Read, 8192, succeeded: false, 3000);
        statistics.RecordCompleted(RingOperation.Discard, 1 << 20, succeeded: true, 10);
        foreach (int size in (int[])[1, 2, 3, 4, 5, 64, 65, 100_000])
        {
            statistics.RecordBatch(size);
        }

        Assert.Equal(2, statistics.Requests(RingOperation.Read));
        Assert.Equal(4096, statistics.Bytes(RingOperation.Read));
        Assert.Equal(1 << 20, statistics.Bytes(RingOperation.Discard));
        Assert.Equal(0, statistics.Requests(RingOperation.Write));
        Assert.Equal(2, statistics.Latency(RingOperation.Read).Count);
        Assert.Equal(4500, statistics.Latency(RingOperation.Read).SumNanoseconds);
        Assert.Equal(1, statistics.Latency(RingOperation.Read).BucketCountAt(LatencyHistogram.BucketOf(1500)));
        Assert.Equal(8, statistics.Batches);
        int[] expected = new int[RingStatistics.BatchSizeBucketCount];
        expected[0] = 1;  // 1
        expected[1] = 1;  // 2
        expected[2] = 2;  // 3, 4
        expected[3] = 1;  // 5
        expected[6] = 1;  // 64
        expected[7] = 1;  // 65
        expected[RingStatistics.BatchSizeBucketCount - 1] = 1;
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.Equal(expected[i], statistics.BatchSizeCount(i));
            if (i < expected.Length - 1)
            {
                Assert.Equal(1 << i, RingStatistics.BatchSizeBucketUpperBound(i));
            }
        }
    }
}
