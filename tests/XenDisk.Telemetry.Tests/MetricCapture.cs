using System.Diagnostics.Metrics;
using OpenTelemetry;
using OpenTelemetry.Metrics;

namespace XenDisk.Telemetry.Tests;

/// <summary>One metric point as the OpenTelemetry SDK exported it: a sum or gauge value, or a histogram.</summary>
internal sealed record Point(string Name, string? Unit, IReadOnlyDictionary<string, string> Tags, double Value, long Count, double Sum, double[] Bounds, long[] BucketCounts)
{
    public string Tag(string key) => Tags[key];
}

/// <summary>
/// A MeterProvider over the XenDisk meter with a pull reader whose exporter copies every point of a
/// collection (the batch is only valid during Export), so tests see exactly what an exporter would be
/// handed, cumulative as Prometheus and the service's OTLP exporter ask for.
/// </summary>
internal sealed class MetricCapture : IDisposable
{
    private readonly CapturingExporter _exporter = new();
    private readonly BaseExportingMetricReader _reader;
    private readonly MeterProvider _provider;

    public MetricCapture(string meterName = XenDiskMetricNames.MeterName)
    {
        _reader = new BaseExportingMetricReader(_exporter) { TemporalityPreference = MetricReaderTemporalityPreference.Cumulative };
        _provider = Sdk.CreateMeterProviderBuilder().AddMeter(meterName).AddReader(_reader).Build()!;
    }

    public List<Point> Collect()
    {
        _exporter.Points.Clear();
        Assert.True(_reader.Collect(5000), "the SDK collected");
        return [.. _exporter.Points];
    }

    public void Dispose() => _provider.Dispose();

    private sealed class CapturingExporter : BaseExporter<Metric>
    {
        public List<Point> Points { get; } = [];

        public override ExportResult Export(in Batch<Metric> batch)
        {
            foreach (Metric metric in batch)
            {
                foreach (ref readonly MetricPoint point in metric.GetMetricPoints())
                {
                    var tags = new Dictionary<string, string>(StringComparer.Ordinal);
                    foreach (KeyValuePair<string, object?> tag in point.Tags)
                    {
                        tags[tag.Key] = Convert.ToString(tag.Value, System.Globalization.CultureInfo.InvariantCulture) ?? "";
                    }

                    if (metric.MetricType == MetricType.Histogram)
                    {
                        var bounds = new List<double>();
                        var counts = new List<long>();
                        foreach (HistogramBucket bucket in point.GetHistogramBuckets())
                        {
                            bounds.Add(bucket.ExplicitBound);
                            counts.Add(bucket.BucketCount);
                        }

                        Points.Add(new Point(metric.Name, metric.Unit, tags, double.NaN, point.GetHistogramCount(), point.GetHistogramSum(), [.. bounds], [.. counts]));
                    }
                    else
                    {
                        double value = metric.MetricType switch
                        {
                            MetricType.LongSum or MetricType.LongSumNonMonotonic => point.GetSumLong(),
                            MetricType.DoubleSum or MetricType.DoubleSumNonMonotonic => point.GetSumDouble(),
                            MetricType.LongGauge => point.GetGaugeLastValueLong(),
                            _ => point.GetGaugeLastValueDouble(),
                        };
                        Points.Add(new Point(metric.Name, metric.Unit, tags, value, 0, 0, [], []));
                    }
                }
            }

            return ExportResult.Success;
        }
    }
}

/// <summary>
/// Tests that listen to the XenDisk meter: a MeterProvider subscribes by meter name, so it would also
/// see the instruments another test created at the same time. They run one at a time.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class XenDiskMeterCollection
{
    public const string Name = "XenDisk meter";
}
