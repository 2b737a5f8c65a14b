using System.Text;
using OpenTelemetry;
using OpenTelemetry.Metrics;

namespace XenDisk.Telemetry.Prometheus;

/// <summary>
/// Produces one Prometheus scrape: collects the OpenTelemetry metrics through <see cref="Reader"/> (add it
/// to the MeterProvider with AddReader) and appends the bucket histograms that OpenTelemetry cannot carry
/// (none now: both histograms are OpenTelemetry instruments). The reader is a pull reader: nothing is collected
/// between scrapes, and its cumulative temporality is what Prometheus expects.
/// Thread-safe: scrapes are serialized, since the reader hands its batch to one exporter call at a time.
/// </summary>
public sealed class PrometheusExposition : IDisposable
{
    /// <summary>A collection that takes longer than this is cut short by the SDK; far beyond any normal scrape.</summary>
    private const int CollectTimeoutMilliseconds = 5000;

    private readonly Func<IReadOnlyList<BucketHistogramFamily>>? _bucketHistograms;
    private readonly CapturingExporter _exporter = new();
    private readonly Lock _scrapeLock = new();

    /// <param name="bucketHistograms">Histograms counted outside OpenTelemetry; null for none.</param>
    public PrometheusExposition(Func<IReadOnlyList<BucketHistogramFamily>>? bucketHistograms)
    {
        _bucketHistograms = bucketHistograms;
        Reader = new BaseExportingMetricReader(_exporter)
        {
            TemporalityPreference = MetricReaderTemporalityPreference.Cumulative,
        };
    }

    public MetricReader Reader { get; }

    /// <summary>The text of one scrape (see <see cref="PrometheusTextWriter"/>).</summary>
    public string Scrape()
    {
        lock (_scrapeLock)
        {
            var writer = new PrometheusTextWriter();
            _exporter.Target = writer;
            try
            {
                // False when the reader is not attached to a provider (yet): the bucket histograms still go out.
                Reader.Collect(CollectTimeoutMilliseconds);
            }
            finally
            {
                _exporter.Target = null;
            }

            if (_bucketHistograms is not null)
            {
                foreach (BucketHistogramFamily family in _bucketHistograms())
                {
                    writer.WriteBucketHistogram(family);
                }
            }

            return writer.ToString();
        }
    }

    /// <summary>The scrape as UTF-8 bytes.</summary>
    public byte[] ScrapeUtf8() => Encoding.UTF8.GetBytes(Scrape());

    public void Dispose() => Reader.Dispose();

    /// <summary>Writes the batch while the reader's collection is running: the batch is only valid during Export.</summary>
    private sealed class CapturingExporter : BaseExporter<Metric>
    {
        public PrometheusTextWriter? Target { get; set; }

        public override ExportResult Export(in Batch<Metric> batch)
        {
            Target?.WriteMetrics(batch);
            return ExportResult.Success;
        }
    }
}
