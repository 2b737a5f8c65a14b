using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using XenDisk.Service.Control;
using XenDisk.Service.Hosting;
using XenDisk.Service.Simulation;
using XenDisk.Service.Systemd;
using XenDisk.Service.Tests.Support;

namespace XenDisk.Service.Tests;

/// <summary>The whole service, in process, on the simulated hypervisor with its demo guests.</summary>
[Collection(ProcessWideCollection.Name)]
public sealed class ServiceHostTests : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);
    private readonly TempDirectory _work = new("xendisk-service-");

    private string SocketPath => Path.Combine(_work.Path, "control.sock");

    public void Dispose() => _work.Dispose();

    internal static int FreePort()
    {
        using var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        return ((IPEndPoint)probe.LocalEndpoint).Port;
    }

    private ServeOptions SimulatedOptions(string? prometheus, int guests = 2, Action<IServiceCollection>? services = null) => new()
    {
        Simulation = new SimulatedServicePlatform(),
        UseEnvironment = false,
        ConfigPath = Path.Combine(_work.Path, "absent.json"),
        MinimumLogLevel = LogLevel.Warning,
        ConfigurationOverrides = new Dictionary<string, string?>
        {
            ["Control:SocketPath"] = SocketPath,
            ["Telemetry:Prometheus:Enabled"] = prometheus is null ? "false" : "true",
            ["Telemetry:Prometheus:ListenAddress"] = prometheus ?? "http://127.0.0.1:0/metrics",
            ["Simulation:Guests"] = guests.ToString(CultureInfo.InvariantCulture),
            ["Simulation:DiskSizeMiB"] = "16",
            ["Simulation:PauseMilliseconds"] = "2",
            ["Backend:MaxQueues"] = "2",
            ["Backend:IoThreadsPerRing"] = "2",
        },
        ConfigureServices = services,
    };

    private static async Task<ServiceStatusReport> WaitForStatusAsync(string socket, Func<ServiceStatusReport, bool> condition, string what)
    {
        using var deadline = new CancellationTokenSource(Timeout);
        ServiceStatusReport? last = null;
        while (!deadline.IsCancellationRequested)
        {
            try
            {
                last = await ControlClient.GetStatusAsync(socket, cancellationToken: deadline.Token);
                if (condition(last))
                {
                    return last;
                }
            }
            catch (ControlClientException)
            {
                // Not listening yet.
            }

            await Task.Delay(100, CancellationToken.None);
        }

        Assert.Fail($"Timed out waiting for {what}; last status: {(last is null ? "none" : StatusTextFormatter.Format(last))}");
        throw new InvalidOperationException();
    }

    [Fact]
    public async Task Serve_simulated_reports_devices_and_growing_counters_over_the_control_socket_and_talks_to_systemd()
    {
        using var systemd = new SystemdNotifyTests.FakeSystemd();
        using var notifySocket = new SystemdNotifyTests.EnvironmentVariable("NOTIFY_SOCKET", systemd.NotifySocket);
        int port = FreePort();
        string metricsUrl = $"http://127.0.0.1:{port}/metrics";
        ServeOptions options = SimulatedOptions(metricsUrl) with { Systemd = new SystemdSettings(Notify: true, TimeSpan.FromMilliseconds(400)) };
        using var stop = new CancellationTokenSource();
        var errors = new StringWriter();
        Task<int> run = XenDiskServiceHost.RunAsync(options, errors, stop.Token);

        // READY=1 from the hosting package's SystemdLifetime and STATUS= from us, both once the host
        // started; ours first (started callbacks run last-registered first, and the lifetime registers
        // before any hosted service starts).
        List<string> startup = await systemd.ReceiveUntilAsync("READY=1", Timeout);
        Assert.Contains(startup, d => d.StartsWith("STATUS=Serving vbd on ", StringComparison.Ordinal));

        ServiceStatusReport first = await WaitForStatusAsync(SocketPath,
            s => s.Devices.Count == 2 && s.Devices.All(d => d.State == "Connected" && d.Counters.TotalRequests > 0), "two connected, busy devices");
        Assert.True(first.Simulated);
        Assert.StartsWith("simulated", first.Platform, StringComparison.OrdinalIgnoreCase);
        DeviceReport a = Assert.Single(first.Devices, d => d.Protocol == "x86_64-abi");
        DeviceReport b = Assert.Single(first.Devices, d => d.Protocol == "x86_32-abi");
        Assert.Equal(2, a.Queues.Count);
        Assert.True(a.Features!.PersistentGrants);
        Assert.True(a.Features.MaxIndirectSegments > 0);
        Assert.Single(b.Queues);
        Assert.False(b.Features!.PersistentGrants);
        Assert.All(first.Devices, d =>
        {
            Assert.Equal(16L << 20, d.Disk!.SizeBytes);
            Assert.Equal(51712, d.DeviceId);
            Assert.StartsWith("/local/domain/0/backend/vbd/", d.BackendPath, StringComparison.Ordinal);
            Assert.Equal(0, d.Counters.TotalErrors);
            Assert.NotNull(Assert.Single(d.Counters.Operations, o => o.Operation == "write").P50Seconds);
        });

        ServiceStatusReport later = await WaitForStatusAsync(SocketPath,
            s => s.Devices.Count == 2 && s.Devices.All(d => d.Counters.TotalRequests > first.Devices.Single(f => f.BackendPath == d.BackendPath).Counters.TotalRequests),
            "the counters to grow");
        Assert.All(later.Devices, d =>
        {
            OperationReport writes = Assert.Single(d.Counters.Operations, o => o.Operation == "write");
            OperationReport reads = Assert.Single(d.Counters.Operations, o => o.Operation == "read");
            Assert.True(writes.Requests > 0 && reads.Requests > 0);
            Assert.True(writes.Bytes > 0);
            Assert.True(writes.P99Seconds >= writes.P50Seconds);
        });

        // The watchdog is petted while the service runs.
        await systemd.ReceiveUntilAsync("WATCHDOG=1", Timeout);

        // The same requests reach the Prometheus endpoint: the histogram's count per device and operation.
        // Telemetry finds new rings on a timer, so the first scrapes may precede the histogram's first point.
        using (var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) })
        {
            string series = $"xendisk_request_duration_seconds_count{{xendisk_device=\"{a.MetricsName}\",xendisk_operation=\"write\"}}";
            string scrape = await http.GetStringAsync(metricsUrl);
            using var deadline = new CancellationTokenSource(Timeout);
            while (!scrape.Contains(series, StringComparison.Ordinal) && !deadline.IsCancellationRequested)
            {
                await Task.Delay(100, CancellationToken.None);
                scrape = await http.GetStringAsync(metricsUrl);
            }

            Assert.Contains(series, scrape, StringComparison.Ordinal);
            Assert.Contains("# TYPE xendisk_request_duration_seconds histogram", scrape, StringComparison.Ordinal);
            Assert.Contains("xendisk_request_duration_seconds_bucket{", scrape, StringComparison.Ordinal);
        }

        string text = StatusTextFormatter.Format(later);
        Assert.Contains(a.BackendPath, text, StringComparison.Ordinal);
        Assert.Contains("p99", text, StringComparison.Ordinal);
        ServiceStatusReport? roundTripped = System.Text.Json.JsonSerializer.Deserialize(ControlClient.ToJson(later), ControlJsonContext.Default.ServiceStatusReport);
        Assert.Equal(later.Devices.Count, roundTripped!.Devices.Count);

        // Memory: every report carries the process's figures; --collect takes them after a full collection.
        MemoryReport uncollected = Assert.IsType<MemoryReport>(later.Memory);
        ServiceStatusReport collected = await ControlClient.GetStatusAsync(SocketPath, collect: true);
        MemoryReport memory = Assert.IsType<MemoryReport>(collected.Memory);
        Assert.False(uncollected.Collected);
        Assert.True(memory.Collected);
        Assert.True(memory.FullCollections > uncollected.FullCollections, "the collection is a full one");
        Assert.InRange(memory.AnonymousBytes, 1, memory.ResidentBytes);
        Assert.InRange(memory.ManagedHeapBytes, 1, memory.ManagedCommittedBytes);
        Assert.Equal(2, collected.Devices.Count);
        Assert.Contains("just collected", StatusTextFormatter.Format(collected), StringComparison.Ordinal);

        await stop.CancelAsync();
        Assert.Equal(ServeExitCodes.Success, await run.WaitAsync(Timeout));
        await systemd.ReceiveUntilAsync("STOPPING=1", Timeout);
        Assert.False(ControlServer.PathExists(SocketPath), "the control socket is removed at stop");
        Assert.Equal("", errors.ToString());
    }

    [Fact]
    public async Task A_second_instance_on_the_same_control_socket_refuses_to_start()
    {
        using IHost first = XenDiskServiceHost.Build(SimulatedOptions(null, guests: 1), XenDiskServiceHost.BuildConfiguration(SimulatedOptions(null, guests: 1)), platform: null);
        await first.StartAsync().WaitAsync(Timeout);
        try
        {
            var errors = new StringWriter();
            int code = await XenDiskServiceHost.RunAsync(SimulatedOptions(null, guests: 1), errors, CancellationToken.None).WaitAsync(Timeout);
            Assert.Equal(ServeExitCodes.Failure, code);
            Assert.Contains("Another xendisk instance is running", errors.ToString(), StringComparison.Ordinal);

            // The first instance is unharmed.
            await WaitForStatusAsync(SocketPath, s => s.Devices.Count == 1, "the first instance to answer");
        }
        finally
        {
            await first.StopAsync().WaitAsync(Timeout);
        }
    }

    [Fact]
    public async Task A_stale_socket_from_a_crashed_instance_is_replaced()
    {
        // A bound socket that does not listen is what a crashed instance leaves: a file nobody answers on.
        // (Disposing it would remove the file, so it stays open for the test.)
        using var stale = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        stale.Bind(new UnixDomainSocketEndPoint(SocketPath));
        Assert.True(ControlServer.PathExists(SocketPath));
        ServeOptions options = SimulatedOptions(null, guests: 1);
        using IHost host = XenDiskServiceHost.Build(options, XenDiskServiceHost.BuildConfiguration(options), platform: null);
        await host.StartAsync().WaitAsync(Timeout);
        try
        {
            await WaitForStatusAsync(SocketPath, s => s.Devices.Count == 1, "the service to answer");
        }
        finally
        {
            await host.StopAsync().WaitAsync(Timeout);
        }
    }

    [Fact]
    public async Task Status_without_a_running_service_says_so()
    {
        ControlClientException missing = await Assert.ThrowsAsync<ControlClientException>(() => ControlClient.GetStatusAsync(SocketPath));
        Assert.Contains("No xendisk service is running", missing.Message, StringComparison.Ordinal);
        Assert.Contains(SocketPath, missing.Message, StringComparison.Ordinal);

        using var stale = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        stale.Bind(new UnixDomainSocketEndPoint(SocketPath));
        ControlClientException refused = await Assert.ThrowsAsync<ControlClientException>(() => ControlClient.GetStatusAsync(SocketPath));
        Assert.Contains("No xendisk service is listening", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Serve_on_this_machine_without_Xen_exits_non_zero_and_names_the_grant_device()
    {
        // This machine is not a Xen dom0: the probe finds no /dev/xen/gntdev.
        Assert.False(XenDisk.Xen.Native.XenEnvironment.Probe().IsUsable, "this test expects a machine without Xen");
        var errors = new StringWriter();
        int code = await XenDiskServiceHost.RunAsync(new ServeOptions
        {
            UseEnvironment = false,
            ConfigPath = Path.Combine(_work.Path, "absent.json"),
            ConfigurationOverrides = new Dictionary<string, string?> { ["Control:SocketPath"] = SocketPath },
        }, errors, CancellationToken.None).WaitAsync(Timeout);

        Assert.Equal(ServeExitCodes.XenUnavailable, code);
        string[] lines = errors.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains("--simulate", lines[0], StringComparison.Ordinal);
        Assert.Contains(lines, l => l.Contains("/dev/xen/gntdev", StringComparison.Ordinal));
        Assert.True(lines.Length >= 3, "each problem on its own line");
        Assert.False(ControlServer.PathExists(SocketPath));
    }
}
