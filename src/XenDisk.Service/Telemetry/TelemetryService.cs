using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using OpenTelemetry.Exporter;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using XenDisk.Backend.ControlPlane;
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
/// (<see cref="XenDiskMetrics.AttachRings"/>) when its device connects (<see cref="BlockBackend.DeviceConnected"/>),
/// and once at start. A ring that carried requests before it adopted the observer replays them, so
/// nothing is lost to the moment it is offered. The rings were once looked for every 250 ms: that
/// timer woke the runtime's timer thread and a pool worker four times a second for nothing, which in
/// a PV dom0 (every wake-up a trip through the hypervisor) cost more CPU than the rings themselves
/// (docs/BENCHMARKS.md, "Background wake-ups"). Registered only while an exporter is enabled.
/// </summary>
internal sealed class TelemetryService(XenDiskMetrics metrics, BlockBackend backend, IOptions<TelemetrySettings> settings, ILogger<TelemetryService> logger)
    : IHostedService
{
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

        // Subscribed before the first look, so that a device connecting in between is not missed.
        backend.DeviceConnected += OnDeviceConnected;
        metrics.AttachRings();
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken)
    {
        backend.DeviceConnected -= OnDeviceConnected;
        return Task.CompletedTask;
    }

    private void OnDeviceConnected(DeviceStatus device) => metrics.AttachRings();
}
