using XenDisk.Backend.DataPlane;
using XenDisk.Telemetry.Collection;

namespace XenDisk.Telemetry.Tests;

public sealed class LatencyQuantilesTests
{
    private static long[] Counts(params long[] nanoseconds)
    {
        var counts = new long[LatencyHistogram.BucketCount];
        foreach (long value in nanoseconds)
        {
            counts[LatencyHistogram.BucketOf(value)]++;
        }

        return counts;
    }

    [Fact]
    public void Histogram_bounds_are_bounds_of_the_data_plane_buckets_so_replayed_counts_are_exact()
    {
        var nativeBounds = new HashSet<long>(Enumerable.Range(0, LatencyHistogram.BucketCount - 1).Select(LatencyHistogram.UpperBoundNanoseconds));
        Assert.All(XenDiskMetricNames.LatencyBucketBounds, b => Assert.Contains((long)Math.Round(b * 1e9), nativeBounds));
        Assert.Equal(1.024e-6, XenDiskMetricNames.LatencyBucketBounds[0], 12);
        Assert.True(XenDiskMetricNames.LatencyBucketBounds[^1] > 10, "the buckets reach past 10 s");
        Assert.Equal(XenDiskMetricNames.LatencyBucketBounds.Order(), XenDiskMetricNames.LatencyBucketBounds);
    }

    [Fact]
    public void Batch_size_buckets_are_centred_on_whole_sizes_and_split_where_the_data_plane_does()
    {
        IReadOnlyList<double> bounds = XenDiskMetricNames.BatchSizeBucketBounds;
        Assert.Equal(0.5, bounds[0]);
        Assert.Equal(1.5, bounds[1]);
        // Every data-plane bucket edge (1, 2, 4, 8, ...) has an exported bound half a request above it.
        for (int b = 0; b < bounds.Count - 1; b++)
        {
            Assert.Equal(RingStatistics.BatchSizeBucketUpperBound(b) + 0.5, bounds[b + 1]);
        }
    }

    [Fact]
    public void Quantiles_fall_inside_the_bucket_holding_that_rank()
    {
        long[] values = [.. Enumerable.Repeat(10_000L, 98), 5_000_000, 5_000_000];
        double p50 = LatencyQuantiles.Estimate(Counts(values), 0.5)!.Value;
        double p99 = LatencyQuantiles.Estimate(Counts(values), 0.99)!.Value;
        int p50Bucket = LatencyHistogram.BucketOf(10_000);
        int p99Bucket = LatencyHistogram.BucketOf(5_000_000);
        Assert.InRange(p50 * 1e9, LatencyHistogram.UpperBoundNanoseconds(p50Bucket - 1), LatencyHistogram.UpperBoundNanoseconds(p50Bucket));
        Assert.InRange(p99 * 1e9, LatencyHistogram.UpperBoundNanoseconds(p99Bucket - 1), LatencyHistogram.UpperBoundNanoseconds(p99Bucket));
    }

    [Fact]
    public void No_durations_means_no_quantile()
    {
        Assert.Null(LatencyQuantiles.Estimate(new long[LatencyHistogram.BucketCount], 0.5));
    }

    [Theory]
    [InlineData(-0.1)]
    [InlineData(1.1)]
    public void Quantiles_outside_zero_to_one_are_refused(double quantile)
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => LatencyQuantiles.Estimate(Counts(1000), quantile));
    }
}
