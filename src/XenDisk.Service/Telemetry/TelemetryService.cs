using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using OpenTelemetry.Exporter;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using XenDisk.Service.Configuration;
using XenDisk.Service.Hosting;
using XenDisk.Telemetry;

namespace XenDisk.Service.Telemetry;

/// <summary>
/// Metrics export through the OpenTelemetry hosting package: one MeterProvider (built and disposed by
/// the host) over the XenDisk meter, with the Prometheus HTTP listener and the OTLP exporter as its
/// readers. Both see the same instruments (<see cref="XenDiskMetrics"/>), so a Prometheus scrape and an
/// OTLP export carry the same series under the same names.
/// </summary>
internal static class TelemetrySetup
{
    /// <summary>The resource's service.name: target_info in Prometheus, the resource in OTLP.</summary>
    public const string ServiceName = "xendisk";

    /// <summary>
    /// Registers the MeterProvider when an exporter is enabled (nothing otherwise: with no listener the
    /// histograms cost a flag test per request). Must come before the backend's registration: the
    /// provider's hosted service then starts first, and the provider, disposed with the container after
    /// every hosted service stopped, exports the backend's final counts over OTLP.
    /// </summary>
    public static void AddXenDiskTelemetry(this IServiceCollection services, IConfiguration configuration)
    {
        var settings = new TelemetrySettings();
        configuration.GetSection(TelemetrySettings.SectionName).Bind(settings);
        PrometheusSettings prometheus = settings.Prometheus;
        OtlpSettings otlp = settings.Otlp;
        if (!prometheus.Enabled && !otlp.Enabled)
        {
            return;
        }

        services.AddOpenTelemetry()
            .ConfigureResource(resource => resource.AddService(ServiceName, serviceVersion: ServiceIdentity.AssemblyVersion, autoGenerateServiceInstanceId: false))
            .WithMetrics(metrics =>
            {
                metrics.AddMeter(XenDiskMetricNames.MeterName);
                // Invalid addresses are reported by validation before the host is built; skip them here.
                if (prometheus.Enabled && PrometheusListenAddress.TryParse(prometheus.ListenAddress, out PrometheusListenAddress? listen, out _))
                {
                    metrics.AddPrometheusHttpListener(options =>
                    {
                        options.Host = listen.Host;
                        options.Port = listen.Port;
                        options.ScrapeEndpointPath = listen.Path;
                        // Series carry only XenDisk's own attributes (the meter is the only one exported);
                        // target_info still names the service.
                        options.ScopeInfoEnabled = false;
                        // Every scrape is collected afresh: the counters' collector already serves one
                        // snapshot to all callbacks of a collection, and Prometheus scrapes seconds apart.
                        options.ScrapeResponseCacheDurationMilliseconds = 0;
                    });
                }

                if (otlp.Enabled && Uri.TryCreate(otlp.Endpoint, UriKind.Absolute, out Uri? endpoint))
                {
                    bool http = string.Equals(otlp.Protocol, "HttpProtobuf", StringComparison.OrdinalIgnoreCase);
                    metrics.AddOtlpExporter((exporter, reader) =>
                    {
                        exporter.Endpoint = endpoint;
                        exporter.Protocol = http ? OtlpExportProtocol.HttpProtobuf : OtlpExportProtocol.Grpc;
                        reader.TemporalityPreference = MetricReaderTemporalityPreference.Cumulative;
                        reader.PeriodicExportingMetricReaderOptions.ExportIntervalMilliseconds = otlp.ExportIntervalSeconds * 1000;
                    });
                }
            });
        services.AddHostedService<TelemetryService>();
    }
}

/// <summary>
/// Says where metrics go, and offers the histograms' observer to every new ring
/// (<see cref="XenDiskMetrics.AttachRings"/>) shortly after it connects. The backend announces no ring,
/// so this looks every <see cref="RingAttachInterval"/>: a ring that carried requests before it was
/// seen replays them when it adopts the observer, so the interval bounds how much there is to replay,
/// not what is counted. Registered only while an exporter is enabled.
/// </summary>
internal sealed class TelemetryService(XenDiskMetrics metrics, IOptions<TelemetrySettings> settings, TimeProvider time, ILogger<TelemetryService> logger)
    : IHostedService, IDisposable
{
    /// <summary>Short next to any scrape or export interval; a pass over the device list costs microseconds.</summary>
    public static readonly TimeSpan RingAttachInterval = TimeSpan.FromMilliseconds(250);

    private ITimer? _timer;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        TelemetrySettings telemetry = settings.Value;
        if (telemetry.Prometheus.Enabled)
        {
            ServiceLog.PrometheusListening(logger, telemetry.Prometheus.ListenAddress);
        }

        if (telemetry.Otlp is { Enabled: true } otlp)
        {
            ServiceLog.OtlpExporting(logger, otlp.Endpoint, otlp.Protocol, otlp.ExportIntervalSeconds);
        }

        _timer = time.CreateTimer(_ => metrics.AttachRings(), null, TimeSpan.Zero, RingAttachInterval);
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken)
    {
        _timer?.Dispose();
        _timer = null;
        return Task.CompletedTask;
    }

    public void Dispose() => _timer?.Dispose();
}
