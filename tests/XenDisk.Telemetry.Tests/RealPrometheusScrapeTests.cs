using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using Xunit.Abstractions;
using XenDisk.Backend.DataPlane;
using XenDisk.Telemetry.Collection;
using XenDisk.TestFrontend;

namespace XenDisk.Telemetry.Tests;

/// <summary>
/// A real Prometheus server (the Debian "prometheus" package, installed by tools/setup --for-tests)
/// scrapes the OpenTelemetry Prometheus exporter, configured as the service configures it, over a
/// backend whose guest made a known number of requests; the values Prometheus answers must be the
/// backend's own counters, and every query of config/grafana-dashboard.json must return data.
/// </summary>
[Trait(Needs.Key, Needs.Prometheus)]
[Collection(XenDiskMeterCollection.Name)]
public sealed class RealPrometheusScrapeTests(RealPrometheusScrapeTests.Scraped scraped, ITestOutputHelper output) : IClassFixture<RealPrometheusScrapeTests.Scraped>
{
    private static readonly TimeSpan QueryTimeout = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Prometheus_scrapes_the_endpoint_and_its_values_match_the_backend()
    {
        scraped.Check();
        HttpClient http = scraped.Http;
        string selector = $"{{xendisk_device=\"{scraped.Device}\",xendisk_operation=\"write\"}}";
        await WaitUntilAsync(async () => await QueryAsync(http, "xendisk_request_duration_seconds_count" + selector) is not null, "xendisk_request_duration_seconds_count");
        Assert.Equal(20, await QueryAsync(http, "xendisk_request_duration_seconds_count" + selector));
        Assert.Equal(20, await QueryAsync(http, "xendisk_request_duration_seconds_count{xendisk_operation=\"read\"}"));
        Assert.Equal(1, await QueryAsync(http, "xendisk_request_duration_seconds_count{xendisk_operation=\"flush\"}"));
        Assert.Equal(20 * 4096, await QueryAsync(http, "xendisk_io_bytes_total" + selector));
        Assert.Equal(20, await QueryAsync(http, $"xendisk_request_duration_seconds_bucket{{xendisk_device=\"{scraped.Device}\",xendisk_operation=\"write\",le=\"+Inf\"}}"));
        Assert.Equal(scraped.WriteSeconds, await QueryAsync(http, "xendisk_request_duration_seconds_sum" + selector) ?? double.NaN, 9);

        // histogram_quantile accepts the buckets as a histogram: a finite, positive p99.
        double? p99 = await QueryAsync(http, $"histogram_quantile(0.99, sum by (le) (xendisk_request_duration_seconds_bucket{selector}))");
        Assert.True(p99 > 0 && p99 < 60, $"p99 {p99} s");

        // A guest that waits for each answer sends batches of one: the batch-size median reads 1, not 0.5.
        Assert.Equal(1, await QueryAsync(http, "histogram_quantile(0.5, sum by (le) (xendisk_ring_batch_size_bucket))"));
        Assert.Equal(scraped.Batches, await QueryAsync(http, "sum(xendisk_ring_batch_size_count)"));
    }

    [Fact]
    public async Task Every_query_of_the_Grafana_dashboard_returns_data()
    {
        scraped.Check();
        List<(string Panel, string Query)> queries = DashboardQueries();
        Assert.True(queries.Count >= 20, $"the dashboard has {queries.Count} queries");
        var empty = new List<string>();
        foreach ((string panel, string query) in queries)
        {
            // Grafana's variables, as "All" selects them; rate windows long enough for several 1 s scrapes.
            string expr = query.Replace("$__rate_interval", "15s", StringComparison.Ordinal).Replace("$__range", "1m", StringComparison.Ordinal)
                .Replace("$job", ".*", StringComparison.Ordinal).Replace("$instance", ".*", StringComparison.Ordinal)
                .Replace("$device", ".*", StringComparison.Ordinal).Replace("$operation", ".*", StringComparison.Ordinal);
            int results = 0;
            await WaitUntilAsync(async () => (results = await ResultCountAsync(scraped.Http, expr)) > 0, $"\"{panel}\" to return data: {expr}", fail: false);
            output.WriteLine($"{results,3} series  {panel}");
            if (results == 0)
            {
                empty.Add($"{panel}: {expr}");
            }
        }

        Assert.True(empty.Count == 0, "queries without data:\n" + string.Join('\n', empty));
    }

    /// <summary>Every panel query and every variable query (label_values(metric...) becomes the metric itself).</summary>
    private static List<(string Panel, string Query)> DashboardQueries()
    {
        string path = Path.Combine(FindRepository(), "config", "grafana-dashboard.json");
        using JsonDocument dashboard = JsonDocument.Parse(File.ReadAllText(path));
        var queries = new List<(string, string)>();
        foreach (JsonElement variable in dashboard.RootElement.GetProperty("templating").GetProperty("list").EnumerateArray())
        {
            if (variable.TryGetProperty("definition", out JsonElement definition) && definition.GetString() is { } text && text.StartsWith("label_values(", StringComparison.Ordinal))
            {
                string inner = text["label_values(".Length..text.LastIndexOf(',')];
                queries.Add(("variable " + variable.GetProperty("name").GetString(), inner));
            }
        }

        foreach (JsonElement panel in dashboard.RootElement.GetProperty("panels").EnumerateArray())
        {
            if (panel.TryGetProperty("targets", out JsonElement targets))
            {
                foreach (JsonElement target in targets.EnumerateArray())
                {
                    queries.Add((panel.GetProperty("title").GetString()!, target.GetProperty("expr").GetString()!));
                }
            }
        }

        return queries;
    }

    private static string FindRepository()
    {
        for (DirectoryInfo? dir = new(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "XenDisk.sln")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException("XenDisk.sln not found above " + AppContext.BaseDirectory);
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

    private static async Task<int> ResultCountAsync(HttpClient http, string query)
    {
        string? body = await TryGetAsync(http, "api/v1/query?query=" + Uri.EscapeDataString(query));
        if (body is null)
        {
            return 0;
        }

        using JsonDocument document = JsonDocument.Parse(body);
        return document.RootElement.GetProperty("data").GetProperty("result").GetArrayLength();
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
        // Prometheus' JSON carries sample values as Go formats them (+Inf, -Inf, NaN or a number).
        return value switch
        {
            "+Inf" => double.PositiveInfinity,
            "-Inf" => double.NegativeInfinity,
            "NaN" => double.NaN,
            _ => double.Parse(value, NumberStyles.Float, CultureInfo.InvariantCulture),
        };
    }

    private async Task WaitUntilAsync(Func<Task<bool>> condition, string what, bool fail = true)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < QueryTimeout)
        {
            scraped.Check();
            if (await condition())
            {
                return;
            }

            await Task.Delay(250);
        }

        if (fail)
        {
            Assert.Fail($"Timed out after {QueryTimeout.TotalSeconds:F0} s waiting for {what}:\n{scraped.Log}");
        }
    }

    /// <summary>
    /// The backend, one guest's known workload (20 verified 4 KiB writes and reads, one flush), the
    /// Prometheus exporter over the XenDisk meter, and a Prometheus server scraping it every second.
    /// </summary>
    public sealed class Scraped : IAsyncLifetime
    {
        private static readonly TimeSpan StartupTimeout = TimeSpan.FromSeconds(60);
        private readonly System.Collections.Concurrent.ConcurrentQueue<string> _log = new();
        private SimulatedBackend? _host;
        private TestMeterFactory? _meters;
        private XenDiskMetrics? _metrics;
        private MeterProvider? _provider;
        private Process? _process;
        private DirectoryInfo? _work;

        public HttpClient Http { get; private set; } = null!;

        public string Device { get; private set; } = "";

        public double WriteSeconds { get; private set; }

        public long Batches { get; private set; }

        public string Log => string.Join('\n', _log.TakeLast(20));

        public void Check()
        {
            if (_process is { HasExited: true } process)
            {
                Assert.Fail($"prometheus exited with code {process.ExitCode}:\n{Log}");
            }
        }

        public async Task InitializeAsync()
        {
            string? prometheus = FindPrometheus();
            Assert.True(prometheus is not null,
                "prometheus is not installed: this test needs a real Prometheus server (Debian: apt-get install -y prometheus; tools/setup --for-tests installs it).");

            _host = await SimulatedBackend.StartAsync();
            BlockFrontend frontend = await _host.AttachGuestAsync("guest");
            _meters = new TestMeterFactory();
            _metrics = new XenDiskMetrics(_meters, new BackendStatisticsCollector(new BlockBackendStatusSource(_host.Backend)));
            int metricsPort = FreePort();
            // As the service configures the exporter (TelemetrySetup). Synchronous instruments record only
            // while a provider listens: it must exist before the I/O.
            _provider = Sdk.CreateMeterProviderBuilder()
                .AddMeter(XenDiskMetricNames.MeterName)
                .AddPrometheusHttpListener(o =>
                {
                    o.Host = "127.0.0.1";
                    o.Port = metricsPort;
                    o.ScrapeEndpointPath = "/metrics";
                    o.ScopeInfoEnabled = false;
                    o.ScrapeResponseCacheDurationMilliseconds = 0;
                })
                .Build()!;
            _metrics.AttachRings();

            await SimulatedBackend.WriteAndVerifyAsync(frontend, count: 20, seed: 7);
            Assert.Equal(0, await frontend.FlushAsync().WaitAsync(SimulatedBackend.Timeout));
            Device = Assert.Single(_host.Backend.Devices).MetricsName;
            IReadOnlyList<RingStatistics> rings = [.. _host.Backend.Devices.Single().Queues.Select(q => q.Ring.Statistics)];
            Assert.Equal(20, rings.Sum(r => r.Requests(RingOperation.Write)));
            WriteSeconds = rings.Sum(r => r.Latency(RingOperation.Write).SumNanoseconds) / 1e9;
            Batches = rings.Sum(r => r.Batches);

            _work = Directory.CreateTempSubdirectory("xendisk-prometheus-");
            int webPort = FreePort();
            string config = Path.Combine(_work.FullName, "prometheus.yml");
            await File.WriteAllTextAsync(config, string.Create(CultureInfo.InvariantCulture, $"""
                global:
                  scrape_interval: 1s
                  scrape_timeout: 1s
                scrape_configs:
                  - job_name: xendisk
                    metrics_path: /metrics
                    static_configs:
                      - targets: ["127.0.0.1:{metricsPort}"]
                """));
            var start = new ProcessStartInfo(prometheus!) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            start.ArgumentList.Add("--config.file=" + config);
            start.ArgumentList.Add("--storage.tsdb.path=" + Path.Combine(_work.FullName, "data"));
            start.ArgumentList.Add("--web.listen-address=127.0.0.1:" + webPort.ToString(CultureInfo.InvariantCulture));
            _process = Process.Start(start) ?? throw new InvalidOperationException("prometheus did not start");
            _process.OutputDataReceived += (_, e) => { if (e.Data is not null) _log.Enqueue(e.Data); };
            _process.ErrorDataReceived += (_, e) => { if (e.Data is not null) _log.Enqueue(e.Data); };
            _process.BeginOutputReadLine();
            _process.BeginErrorReadLine();
            Http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{webPort}/"), Timeout = TimeSpan.FromSeconds(5) };

            // Ready, then the target up (a scrape parsed).
            var clock = Stopwatch.StartNew();
            while (await QueryAsync(Http, "up{job=\"xendisk\"}") is not 1)
            {
                Check();
                Assert.True(clock.Elapsed < StartupTimeout, $"Prometheus did not scrape the endpoint successfully within {StartupTimeout.TotalSeconds} s:\n{Log}");
                await Task.Delay(250);
            }
        }

        public async Task DisposeAsync()
        {
            if (_process is not null)
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(20));
                _process.Dispose();
            }

            Http?.Dispose();
            _provider?.Dispose();
            _metrics?.Dispose();
            _meters?.Dispose();
            if (_host is not null)
            {
                await _host.DisposeAsync();
            }

            _work?.Delete(recursive: true);
        }

        private static string? FindPrometheus() =>
            File.Exists("/usr/bin/prometheus")
                ? "/usr/bin/prometheus"
                : (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
                    .Select(d => Path.Combine(d, "prometheus")).FirstOrDefault(File.Exists);

        private static int FreePort()
        {
            using var probe = new TcpListener(IPAddress.Loopback, 0);
            probe.Start();
            return ((IPEndPoint)probe.LocalEndpoint).Port;
        }
    }
}
