using XenDisk.Backend.DataPlane;

namespace XenDisk.Telemetry.Collection;

/// <summary>Quantiles of the data plane's fixed-bucket <see cref="LatencyHistogram"/> counts.</summary>
public static class LatencyQuantiles
{
    /// <summary>
    /// The <paramref name="quantile"/> (0..1) of the durations counted in <paramref name="bucketCounts"/>
    /// (one count per <see cref="LatencyHistogram"/> bucket), in seconds, interpolated linearly inside the
    /// bucket it falls in (as Prometheus' histogram_quantile does); null when nothing was counted. A
    /// quantile in the open-ended last bucket reports that bucket's lower bound.
    /// </summary>
    public static double? Estimate(ReadOnlySpan<long> bucketCounts, double quantile)
    {
        if (bucketCounts.Length != LatencyHistogram.BucketCount)
        {
            throw new ArgumentException($"Expected {LatencyHistogram.BucketCount} bucket counts.", nameof(bucketCounts));
        }

        ArgumentOutOfRangeException.ThrowIfLessThan(quantile, 0.0);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(quantile, 1.0);
        long total = 0;
        foreach (long count in bucketCounts)
        {
            total += count;
        }

        if (total == 0)
        {
            return null;
        }

        double rank = quantile * total;
        long seen = 0;
        for (int bucket = 0; bucket < bucketCounts.Length; bucket++)
        {
            long count = bucketCounts[bucket];
            if (count == 0 || seen + count < rank)
            {
                seen += count;
                continue;
            }

            double lower = bucket == 0 ? 0 : LatencyHistogram.UpperBoundNanoseconds(bucket - 1);
            if (bucket == bucketCounts.Length - 1)
            {
                return lower / 1e9;
            }

            double upper = LatencyHistogram.UpperBoundNanoseconds(bucket);
            double fraction = Math.Clamp((rank - seen) / count, 0, 1);
            return (lower + ((upper - lower) * fraction)) / 1e9;
        }

        return LatencyHistogram.UpperBoundNanoseconds(LatencyHistogram.BucketCount - 2) / 1e9;
    }
}
