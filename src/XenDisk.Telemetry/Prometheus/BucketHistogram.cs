namespace XenDisk.Telemetry.Prometheus;

/// <summary>
/// A histogram whose buckets were counted elsewhere (the data plane's fixed buckets) and are exposed as
/// they are: OpenTelemetry has no observable histogram instrument, so these bypass the SDK and go to the
/// Prometheus exposition directly.
/// </summary>
/// <param name="Name">The instrument name (dotted); the exposition derives the Prometheus name with <paramref name="Unit"/>.</param>
/// <param name="Bounds">Inclusive upper bounds, increasing; +Inf is implied.</param>
public sealed record BucketHistogramFamily(string Name, string Unit, string Description, IReadOnlyList<double> Bounds, IReadOnlyList<BucketHistogramSeries> Series);

/// <summary>One labelled histogram.</summary>
/// <param name="CumulativeCounts">Per bound, the observations at or below it (non-decreasing).</param>
/// <param name="Count">All observations (the +Inf bucket).</param>
/// <param name="Sum">Sum of the observations; null when the source does not know it (the text format then carries no _sum line).</param>
public sealed record BucketHistogramSeries(
    IReadOnlyList<KeyValuePair<string, string>> Attributes,
    IReadOnlyList<long> CumulativeCounts,
    long Count,
    double? Sum);
