using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using OpenTelemetry;
using OpenTelemetry.Exporter;
using OpenTelemetry.Metrics;
using XenDisk.Service.Configuration;
using XenDisk.Telemetry;
using XenDisk.Telemetry.Prometheus;

namespace XenDisk.Service.Telemetry;

/// <summary>
/// Owns the OpenTelemetry MeterProvider (built here: the OpenTelemetry hosting package is not used) with
/// up to two readers: the Prometheus pull reader behind the HTTP endpoint, and the OTLP exporter's
/// periodic reader. Both read the same observable instruments (<see cref="XenDiskMetrics"/>); the
/// latency and batch-size histograms reach Prometheus only (see docs/OPERATIONS.md, "Metrics").
/// Started first and stopped last, so the final OTLP export sees the backend's last counts.
/// </summary>
internal sealed class TelemetryService : IHostedService, IAsyncDisposable
{
    /// <summary>How long the last OTLP export may take at shutdown before it is abandoned.</summary>
    private const int ShutdownExportTimeoutMilliseconds = 5000;

    private readonly TelemetrySettings _settings;
    private readonly XenDiskMetrics _metrics;
    private readonly ILoggerFactory _loggerFactory;
    private readonly ILogger _logger;
    private MeterProvider? _provider;
    private PrometheusExposition? _exposition;
    private PrometheusHttpServer? _server;
    private int _disposed;
    private bool _shutDown;

    public TelemetryService(IOptions<TelemetrySettings> settings, XenDiskMetrics metrics, ILoggerFactory loggerFactory)
    {
        _settings = settings.Value;
        _metrics = metrics;
        _loggerFactory = loggerFactory;
        _logger = loggerFactory.CreateLogger<TelemetryService>();
    }

    /// <summary>The scrape URL once started (with the real port when the configuration asked for port 0).</summary>
    public Uri? PrometheusUrl => _server?.Url;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        PrometheusSettings prometheus = _settings.Prometheus;
        OtlpSettings otlp = _settings.Otlp;
        if (!prometheus.Enabled && !otlp.Enabled)
        {
            return Task.CompletedTask;
        }

        MeterProviderBuilder builder = Sdk.CreateMeterProviderBuilder().AddMeter(XenDiskMetricNames.MeterName);
        if (prometheus.Enabled)
        {
            _exposition = new PrometheusExposition(null);
            builder.AddReader(_exposition.Reader);
        }

        if (otlp.Enabled)
        {
            bool http = string.Equals(otlp.Protocol, "HttpProtobuf", StringComparison.OrdinalIgnoreCase);
            builder.AddOtlpExporter((exporter, reader) =>
            {
                exporter.Endpoint = new Uri(otlp.Endpoint);
                exporter.Protocol = http ? OtlpExportProtocol.HttpProtobuf : OtlpExportProtocol.Grpc;
                reader.TemporalityPreference = MetricReaderTemporalityPreference.Cumulative;
                reader.PeriodicExportingMetricReaderOptions.ExportIntervalMilliseconds = otlp.ExportIntervalSeconds * 1000;
            });
            ServiceLog.OtlpExporting(_logger, otlp.Endpoint, http ? "HttpProtobuf" : "Grpc", otlp.ExportIntervalSeconds);
        }

        _provider = builder.Build();
        if (_exposition is not null)
        {
            _server = new PrometheusHttpServer(new Uri(prometheus.ListenAddress), _exposition.ScrapeUtf8, _loggerFactory.CreateLogger<PrometheusHttpServer>());
            _server.Start();
        }

        return Task.CompletedTask;
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_server is not null)
        {
            await _server.DisposeAsync().ConfigureAwait(false);
            _server = null;
        }

        // Shutdown makes the OTLP reader export once more, so the last counts are not lost.
        if (_provider is not null && !_shutDown)
        {
            _shutDown = true;
            _provider.Shutdown(ShutdownExportTimeoutMilliseconds);
        }
    }

    public async ValueTask DisposeAsync()
    {
        // Idempotent: the host stops the service, and the container disposes it.
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        await StopAsync(CancellationToken.None).ConfigureAwait(false);
        _provider?.Dispose();
        _provider = null;
        _exposition?.Dispose();
        _exposition = null;
    }
}
