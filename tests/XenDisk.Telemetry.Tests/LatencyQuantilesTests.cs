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
    public void Export_bounds_are_bounds_of_the_data_plane_buckets_so_counts_are_exact()
    {
        var nativeBounds = new HashSet<long>(Enumerable.Range(0, LatencyHistogram.BucketCount - 1).Select(LatencyHistogram.UpperBoundNanoseconds));
        Assert.All(XenDiskMetricNames.LatencyExportBounds, b => Assert.Contains((long)Math.Round(b * 1e9), nativeBounds));
        Assert.Equal(1.024e-6, XenDiskMetricNames.LatencyExportBounds[0], 12);
        Assert.True(XenDiskMetricNames.LatencyExportBounds[^1] > 10, "the buckets reach past 10 s");
        Assert.Equal(XenDiskMetricNames.LatencyExportBounds.Order(), XenDiskMetricNames.LatencyExportBounds);
    }

    [Fact]
    public void Cumulative_counts_count_every_duration_below_each_bound()
    {
        long[] values = [500, 1_100, 1_600, 3_000, 3_100, 1_000_000, 2_000_000_000, 100_000_000_000];
        long[] cumulative = LatencyQuantiles.Cumulative(Counts(values), XenDiskMetricNames.LatencyExportBounds);
        for (int i = 0; i < cumulative.Length; i++)
        {
            long bound = (long)Math.Round(XenDiskMetricNames.LatencyExportBounds[i] * 1e9);
            // Native bounds are exclusive: a duration equal to a bound lands one bucket up.
            Assert.Equal(values.Count(v => v < bound), cumulative[i]);
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
