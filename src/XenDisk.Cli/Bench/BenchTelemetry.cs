using System.Diagnostics;
using System.Diagnostics.Metrics;
using Microsoft.Extensions.DependencyInjection;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using XenDisk.Backend.ControlPlane;
using XenDisk.Telemetry;
using XenDisk.Telemetry.Collection;

namespace XenDisk.Cli.Bench;

/// <summary>
/// The service's request-duration and batch-size histograms, recording into a real OpenTelemetry SDK
/// meter provider exactly as under `serve` (the exporter differs, not the recording path), so that a
/// benchmark can measure what the histograms cost per request. Collected once at the end to check that
/// every measured request reached the histogram.
/// </summary>
internal sealed class BenchTelemetry : IDisposable
{
    private readonly ServiceProvider _services;
    private readonly MeterProvider _meterProvider;
    private readonly BaseExportingMetricReader _reader;
    private readonly CountingExporter _exporter = new();

    private BenchTelemetry(BlockBackend backend)
    {
        _services = new ServiceCollection().AddMetrics().BuildServiceProvider();
        _reader = new BaseExportingMetricReader(_exporter) { TemporalityPreference = MetricReaderTemporalityPreference.Cumulative };
        _meterProvider = Sdk.CreateMeterProviderBuilder().AddMeter(XenDiskMetricNames.MeterName).AddReader(_reader).Build();
        Metrics = new XenDiskMetrics(_services.GetRequiredService<IMeterFactory>(), new BackendStatisticsCollector(new BlockBackendStatusSource(backend)));
    }

    public XenDiskMetrics Metrics { get; }

    /// <summary>Creates the instruments and offers the observer to every ring the backend has now.</summary>
    public static BenchTelemetry Attach(BlockBackend backend)
    {
        var telemetry = new BenchTelemetry(backend);
        telemetry.Metrics.AttachRings();
        return telemetry;
    }

    /// <summary>Collects now; the number of requests the request-duration histogram has counted, over every series.</summary>
    public long CollectRequestCount()
    {
        _reader.Collect();
        return _exporter.RequestDurationCount;
    }

    /// <summary>
    /// CPU time of one request-duration recording as the ring observer makes it (a Record with the
    /// device and operation tags into the same SDK), measured on this thread over
    /// <paramref name="calls"/> calls of realistic durations into a series of its own.
    /// </summary>
    public double MeasureRecordNanoseconds(int calls)
    {
        var tags = new TagList { { XenDiskMetricNames.DeviceAttribute, "calibration" }, { XenDiskMetricNames.OperationAttribute, "read" } };
        Histogram<double> durations = Metrics.RequestDurations;
        for (int i = 0; i < 10_000; i++)
        {
            durations.Record((20_000 + (i & 1023) * 100) / 1e9, in tags);
        }

        long before = ThreadCpuClock.CurrentThreadNanoseconds();
        for (int i = 0; i < calls; i++)
        {
            durations.Record((20_000 + (i & 1023) * 100) / 1e9, in tags);
        }

        return (ThreadCpuClock.CurrentThreadNanoseconds() - before) / (double)calls;
    }

    public void Dispose()
    {
        _meterProvider.Dispose();
        Metrics.Dispose();
        _services.Dispose();
    }

    private sealed class CountingExporter : BaseExporter<Metric>
    {
        public long RequestDurationCount { get; private set; }

        public override ExportResult Export(in Batch<Metric> batch)
        {
            long count = 0;
            foreach (Metric metric in batch)
            {
                if (metric.Name != XenDiskMetricNames.RequestDuration)
                {
                    continue;
                }

                foreach (ref readonly MetricPoint point in metric.GetMetricPoints())
                {
                    count += point.GetHistogramCount();
                }
            }

            RequestDurationCount = count;
            return ExportResult.Success;
        }
    }
}
