using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using Xunit.Abstractions;
using XenDisk.Backend.DataPlane;
using XenDisk.Telemetry.Collection;
using XenDisk.Telemetry.Prometheus;
using XenDisk.TestFrontend;

namespace XenDisk.Telemetry.Tests;

/// <summary>
/// A real Prometheus server (the Debian "prometheus" package, installed by tools/setup --for-tests)
/// scrapes the endpoint and answers queries; the values must be the backend's own counters. This is
/// the test that the exposition is not just self-consistent but accepted by the consumer it is for.
/// </summary>
[Collection(XenDiskMeterCollection.Name)]
public sealed class RealPrometheusScrapeTests(ITestOutputHelper output)
{
    private static readonly TimeSpan StartupTimeout = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan QueryTimeout = TimeSpan.FromSeconds(60);

    private static string? FindPrometheus()
    {
        if (File.Exists("/usr/bin/prometheus"))
        {
            return "/usr/bin/prometheus";
        }

        return (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, "prometheus"))
            .FirstOrDefault(File.Exists);
    }

    private static int FreePort()
    {
        using var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        return ((IPEndPoint)probe.LocalEndpoint).Port;
    }

    [Fact]
    public async Task Prometheus_scrapes_the_endpoint_and_its_values_match_the_backend()
    {
        string? prometheus = FindPrometheus();
        Assert.True(prometheus is not null,
            "prometheus is not installed: this test needs a real Prometheus server (Debian: apt-get install -y prometheus; tools/setup --for-tests installs it).");

        await using SimulatedBackend host = await SimulatedBackend.StartAsync();
        BlockFrontend frontend = await host.AttachGuestAsync("guest");
        using var meters = new TestMeterFactory();
        var collector = new BackendStatisticsCollector(new BlockBackendStatusSource(host.Backend));
        using var metrics = new XenDiskMetrics(meters, collector);
        // Synchronous instruments record only while a provider listens: it must exist before the I/O.
        using var exposition = new PrometheusExposition(null);
        using MeterProvider provider = Sdk.CreateMeterProviderBuilder().AddMeter(XenDiskMetricNames.MeterName).AddReader(exposition.Reader).Build()!;
        metrics.AttachRings();
        await SimulatedBackend.WriteAndVerifyAsync(frontend, count: 20, seed: 7);
        Assert.Equal(0, await frontend.FlushAsync().WaitAsync(SimulatedBackend.Timeout));
        string device = Assert.Single(host.Backend.Devices).BackendPath;
        long writes = host.Backend.Devices.Single().Queues.Sum(q => q.Ring.Statistics.Requests(RingOperation.Write));
        Assert.Equal(20, writes);

        await using var server = new PrometheusHttpServer(new Uri("http://127.0.0.1:0/metrics"), exposition.ScrapeUtf8, NullLogger.Instance);
        server.Start();

        DirectoryInfo work = Directory.CreateTempSubdirectory("xendisk-prometheus-");
        int webPort = FreePort();
        string config = Path.Combine(work.FullName, "prometheus.yml");
        await File.WriteAllTextAsync(config, string.Create(CultureInfo.InvariantCulture, $"""
            global:
              scrape_interval: 1s
              scrape_timeout: 1s
            scrape_configs:
              - job_name: xendisk
                metrics_path: /metrics
                static_configs:
                  - targets: ["127.0.0.1:{server.LocalEndPoint!.Port}"]
            """));

        var start = new ProcessStartInfo(prometheus!)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add("--config.file=" + config);
        start.ArgumentList.Add("--storage.tsdb.path=" + Path.Combine(work.FullName, "data"));
        start.ArgumentList.Add("--web.listen-address=127.0.0.1:" + webPort.ToString(CultureInfo.InvariantCulture));
        var log = new System.Collections.Concurrent.ConcurrentQueue<string>();
        using Process process = Process.Start(start) ?? throw new InvalidOperationException("prometheus did not start");
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) log.Enqueue(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) log.Enqueue(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{webPort}/"), Timeout = TimeSpan.FromSeconds(5) };
            await WaitUntilAsync(async () => (await TryGetAsync(http, "-/ready")) is not null, StartupTimeout, "Prometheus to become ready", process, log);

            // The target must be up (the scrape parsed), then the series carry the backend's numbers.
            await WaitUntilAsync(async () => await QueryAsync(http, "up{job=\"xendisk\"}") is 1, QueryTimeout, "a successful scrape (up == 1)", process, log);
            string selector = $"{{xendisk_device=\"{device}\",xendisk_operation=\"write\"}}";
            double? requestCount = null;
            await WaitUntilAsync(async () => (requestCount = await QueryAsync(http, "xendisk_request_duration_seconds_count" + selector)) is not null, QueryTimeout, "xendisk_request_duration_seconds_count", process, log);
            Assert.Equal(writes, requestCount);
            Assert.Equal(20, await QueryAsync(http, "xendisk_request_duration_seconds_count{xendisk_operation=\"read\"}"));
            Assert.Equal(1, await QueryAsync(http, "xendisk_request_duration_seconds_count{xendisk_operation=\"flush\"}"));
            Assert.Equal(20 * 4096, await QueryAsync(http, "xendisk_io_bytes_total" + selector));
            Assert.Equal(writes, await QueryAsync(http, $"xendisk_request_duration_seconds_bucket{{xendisk_device=\"{device}\",xendisk_operation=\"write\",le=\"+Inf\"}}"));

            // histogram_quantile accepts the buckets as a histogram: a finite, positive p99.
            double? p99 = await QueryAsync(http, $"histogram_quantile(0.99, sum by (le) (xendisk_request_duration_seconds_bucket{selector}))");
            Assert.NotNull(p99);
            Assert.True(p99 > 0 && p99 < 60, $"p99 {p99} s");
        }
        finally
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(20));
            foreach (string line in log.TakeLast(20))
            {
                output.WriteLine(line);
            }

            work.Delete(recursive: true);
        }
    }

    private static async Task<string?> TryGetAsync(HttpClient http, string path)
    {
        try
        {
            using HttpResponseMessage response = await http.GetAsync(path);
            return response.IsSuccessStatusCode ? await response.Content.ReadAsStringAsync() : null;
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
        {
            return null;
        }
    }

    /// <summary>The single value of an instant query, or null when it has no result.</summary>
    private static async Task<double?> QueryAsync(HttpClient http, string query)
    {
        string? body = await TryGetAsync(http, "api/v1/query?query=" + Uri.EscapeDataString(query));
        if (body is null)
        {
            return null;
        }

        using JsonDocument document = JsonDocument.Parse(body);
        JsonElement result = document.RootElement.GetProperty("data").GetProperty("result");
        if (result.GetArrayLength() == 0)
        {
            return null;
        }

        Assert.Equal(1, result.GetArrayLength());
        string value = result[0].GetProperty("value")[1].GetString()!;
        return PrometheusTextParser.ParseValue(value);
    }

    private static async Task WaitUntilAsync(Func<Task<bool>> condition, TimeSpan timeout, string what, Process process,
        System.Collections.Concurrent.ConcurrentQueue<string> log)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < timeout)
        {
            if (process.HasExited)
            {
                Assert.Fail($"prometheus exited with code {process.ExitCode} while waiting for {what}:\n{string.Join('\n', log.TakeLast(20))}");
            }

            if (await condition())
            {
                return;
            }

            await Task.Delay(250);
        }

        Assert.Fail($"Timed out after {timeout.TotalSeconds:F0} s waiting for {what}:\n{string.Join('\n', log.TakeLast(20))}");
    }
}
