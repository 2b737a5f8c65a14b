using System.Globalization;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using XenDisk.Service.Control;
using XenDisk.Service.Hosting;
using XenDisk.Service.Simulation;
using XenDisk.Service.Tests.Support;
using XenDisk.Telemetry;

namespace XenDisk.Service.Tests;

/// <summary>
/// The service exports its histograms over OTLP/HTTP to a receiver on loopback: every device's request
/// durations per operation and batch sizes per queue arrive as histogram points with the configured buckets.
/// </summary>
[Collection(ProcessWideCollection.Name)]
public sealed class OtlpExportTests : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);
    private readonly TempDirectory _work = new("xendisk-otlp-");

    public void Dispose() => _work.Dispose();

    [Fact]
    public async Task Request_duration_histograms_reach_an_OTLP_receiver_per_device_and_operation()
    {
        await using var receiver = new OtlpReceiver(ServiceHostTests.FreePort());
        string socket = Path.Combine(_work.Path, "control.sock");
        var options = new ServeOptions
        {
            Simulation = new SimulatedServicePlatform(),
            UseEnvironment = false,
            ConfigPath = Path.Combine(_work.Path, "absent.json"),
            MinimumLogLevel = LogLevel.Warning,
            ConfigurationOverrides = new Dictionary<string, string?>
            {
                ["Control:SocketPath"] = socket,
                ["Telemetry:Prometheus:Enabled"] = "false",
                ["Telemetry:Otlp:Enabled"] = "true",
                ["Telemetry:Otlp:Protocol"] = "HttpProtobuf",
                ["Telemetry:Otlp:Endpoint"] = receiver.Endpoint,
                ["Telemetry:Otlp:ExportIntervalSeconds"] = "1",
                ["Simulation:Guests"] = "2",
                ["Simulation:DiskSizeMiB"] = "16",
                ["Simulation:PauseMilliseconds"] = "2",
                ["Backend:MaxQueues"] = "2",
            },
        };
        using IHost host = XenDiskServiceHost.Build(options, XenDiskServiceHost.BuildConfiguration(options), platform: null);
        await host.StartAsync().WaitAsync(Timeout);
        List<string> devices;
        List<OtlpHistogramPoint> points;
        try
        {
            ServiceStatusReport status = await ControlClient.GetStatusAsync(socket).WaitAsync(Timeout);
            devices = [.. status.Devices.Select(d => d.MetricsName!)];
            Assert.Equal(2, devices.Count);

            // The demo guests write, read back and flush every 8th round: wait for an export that has
            // all three operations of both devices (the first exports may precede a ring's first point).
            using var deadline = new CancellationTokenSource(Timeout);
            do
            {
                points = await receiver.NextExportAsync(Timeout);
            }
            while (!deadline.IsCancellationRequested && !devices.All(d => new[] { "read", "write", "flush" }.All(op => Duration(points, d, op) is { Count: > 0 })));
        }
        finally
        {
            await host.StopAsync().WaitAsync(Timeout);
        }

        foreach (string device in devices)
        {
            foreach (string operation in new[] { "read", "write", "flush" })
            {
                OtlpHistogramPoint point = Duration(points, device, operation) ?? throw new Xunit.Sdk.XunitException($"no {operation} histogram for {device}");
                Assert.Equal("s", point.Unit);
                Assert.Equal(XenDiskMetricNames.LatencyBucketBounds, point.Bounds);
                Assert.Equal(point.Bounds.Count + 1, point.BucketCounts.Count);
                Assert.Equal(point.Count, point.BucketCounts.Aggregate(0UL, (a, b) => a + b));
                Assert.True(point.Sum > 0 && point.Sum / point.Count < 10, $"{device} {operation}: mean {point.Sum / point.Count} s");
            }

            List<OtlpHistogramPoint> batches = [.. points.Where(p => p.Metric == XenDiskMetricNames.RingBatchSize && p.Attributes[XenDiskMetricNames.DeviceAttribute] == device)];
            Assert.NotEmpty(batches);
            Assert.All(batches, b => Assert.Equal(XenDiskMetricNames.BatchSizeBucketBounds, b.Bounds));
            Assert.All(batches, b => Assert.True(int.Parse(b.Attributes[XenDiskMetricNames.QueueAttribute], CultureInfo.InvariantCulture) >= 0));
        }

        // Disposing the host disposes the MeterProvider, which exports once more, after the backend
        // stopped: the final counts, never fewer than any earlier export's (cumulative temporality).
        receiver.Drain();
        host.Dispose();
        List<OtlpHistogramPoint> last = Assert.Single(receiver.Drain());
        Assert.True(Duration(last, devices[0], "write")!.Count >= Duration(points, devices[0], "write")!.Count);
    }

    private static OtlpHistogramPoint? Duration(List<OtlpHistogramPoint> points, string device, string operation) =>
        points.SingleOrDefault(p => p.Metric == XenDiskMetricNames.RequestDuration
            && p.Attributes.GetValueOrDefault(XenDiskMetricNames.DeviceAttribute) == device
            && p.Attributes.GetValueOrDefault(XenDiskMetricNames.OperationAttribute) == operation);
}
