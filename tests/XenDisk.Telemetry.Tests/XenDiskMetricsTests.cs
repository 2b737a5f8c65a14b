using OpenTelemetry;
using OpenTelemetry.Metrics;
using XenDisk.Backend.ControlPlane;
using XenDisk.Backend.DataPlane;
using XenDisk.Telemetry.Collection;
using XenDisk.Telemetry.CopyOnWrite;
using XenDisk.Telemetry.Prometheus;
using XenDisk.TestFrontend;

namespace XenDisk.Telemetry.Tests;

public sealed class XenDiskMetricsTests
{
    [Fact]
    public async Task Exported_counters_equal_the_requests_the_guest_made()
    {
        await using SimulatedBackend host = await SimulatedBackend.StartAsync();
        BlockFrontend frontend = await host.AttachGuestAsync("guest");
        await SimulatedBackend.WriteAndVerifyAsync(frontend, count: 12, seed: 1);
        Assert.Equal(0, await frontend.FlushAsync().WaitAsync(SimulatedBackend.Timeout));

        using var meters = new TestMeterFactory();
        var collector = new BackendStatisticsCollector(new BlockBackendStatusSource(host.Backend), maximumAge: TimeSpan.Zero);
        using var metrics = new XenDiskMetrics(meters, collector);
        using var exposition = new PrometheusExposition(metrics.GetBucketHistograms);
        using MeterProvider provider = Sdk.CreateMeterProviderBuilder().AddMeter(XenDiskMetricNames.MeterName).AddReader(exposition.Reader).Build()!;

        List<Sample> samples = PrometheusTextParser.Parse(exposition.Scrape());
        string device = Assert.Single(host.Backend.Devices).BackendPath;

        double Value(string name, string operation) =>
            Assert.Single(samples, s => s.Name == name && s.Labels["xendisk_device"] == device && s.Labels.GetValueOrDefault("xendisk_operation") == operation).Value;

        Assert.Equal(12, Value("xendisk_request_count_total", "write"));
        Assert.Equal(12, Value("xendisk_request_count_total", "read"));
        Assert.Equal(1, Value("xendisk_request_count_total", "flush"));
        Assert.Equal(0, Value("xendisk_request_count_total", "discard"));
        Assert.Equal(12 * 4096, Value("xendisk_io_bytes_total", "write"));
        Assert.Equal(12 * 4096, Value("xendisk_io_bytes_total", "read"));

        // The latency histogram comes from the data plane's buckets: its count is the request count,
        // its buckets are cumulative and its sum matches the OTLP-visible request time.
        Assert.Equal(12, Value("xendisk_request_duration_seconds_count", "write"));
        double[] buckets = [.. samples.Where(s => s.Name == "xendisk_request_duration_seconds_bucket"
            && s.Labels["xendisk_device"] == device && s.Labels["xendisk_operation"] == "write").Select(s => s.Value)];
        Assert.Equal(XenDiskMetricNames.LatencyExportBounds.Count + 1, buckets.Length);
        Assert.Equal(buckets.Order(), buckets);
        Assert.Equal(12, buckets[^1]);
        Assert.Equal(Value("xendisk_request_time_seconds_total", "write"), Value("xendisk_request_duration_seconds_sum", "write"), 9);

        Assert.Equal(0, Assert.Single(samples, s => s.Name == "xendisk_errors_total" && s.Labels["error_type"] == "guest").Value);
        Assert.Equal(1, Assert.Single(samples, s => s.Name == "xendisk_devices" && s.Labels["xendisk_device_state"] == "connected").Value);
        Assert.Equal(frontend.QueueCount, samples.Count(s => s.Name == "xendisk_requests_in_flight"));
        double sent = samples.Where(s => s.Name == "xendisk_notifications_total" && s.Labels["xendisk_notification_outcome"] == "sent").Sum(s => s.Value);
        double suppressed = samples.Where(s => s.Name == "xendisk_notifications_total" && s.Labels["xendisk_notification_outcome"] == "suppressed").Sum(s => s.Value);
        Assert.True(sent >= 1, "a synchronous guest waits for every answer, so the backend must have notified it");
        Assert.True(sent + suppressed >= 1);
        double batches = samples.Where(s => s.Name == "xendisk_ring_batch_size_count").Sum(s => s.Value);
        Assert.Equal(samples.Where(s => s.Name == "xendisk_ring_batches_total").Sum(s => s.Value), batches);
    }

    [Fact]
    public async Task Counters_stay_monotonic_when_the_frontend_reconnects()
    {
        await using SimulatedBackend host = await SimulatedBackend.StartAsync();
        BlockFrontend frontend = await host.AttachGuestAsync("guest");
        await SimulatedBackend.WriteAndVerifyAsync(frontend, count: 5, seed: 2);

        var collector = new BackendStatisticsCollector(new BlockBackendStatusSource(host.Backend), maximumAge: TimeSpan.Zero);
        DeviceCounters before = Assert.Single(collector.Collect().Devices);
        Assert.Equal(5, before.Total.Requests[(int)RingOperation.Write]);

        await frontend.DisconnectAsync().WaitAsync(SimulatedBackend.Timeout);
        DeviceCounters closed = Assert.Single(collector.Collect().Devices);
        Assert.Equal(5, closed.Total.Requests[(int)RingOperation.Write]);
        Assert.All(closed.Queues, q => Assert.False(q.Connected));

        await frontend.ConnectAsync().WaitAsync(SimulatedBackend.Timeout);
        await SimulatedBackend.WriteAndVerifyAsync(frontend, count: 3, seed: 3);
        DeviceCounters after = Assert.Single(collector.Collect().Devices);
        Assert.Equal(8, after.Total.Requests[(int)RingOperation.Write]);
        Assert.Equal(8, after.Total.LatencyCount[(int)RingOperation.Write]);
    }

    [Fact]
    public void Snapshots_are_reused_within_their_maximum_age_and_taken_anew_after()
    {
        var source = new CountingSource();
        var time = new ManualTime();
        var collector = new BackendStatisticsCollector(source, time, TimeSpan.FromMilliseconds(200));
        BackendSnapshot first = collector.GetSnapshot();
        Assert.Same(first, collector.GetSnapshot());
        Assert.Equal(1, source.Calls);
        time.Advance(TimeSpan.FromMilliseconds(250));
        Assert.NotSame(first, collector.GetSnapshot());
        Assert.Equal(2, source.Calls);
    }

    [Fact]
    public void Copy_on_write_sources_registered_later_are_exported()
    {
        using var meters = new TestMeterFactory();
        var collector = new BackendStatisticsCollector(new CountingSource());
        using var metrics = new XenDiskMetrics(meters, collector);
        using var exposition = new PrometheusExposition(metrics.GetBucketHistograms);
        using MeterProvider provider = Sdk.CreateMeterProviderBuilder().AddMeter(XenDiskMetricNames.MeterName).AddReader(exposition.Reader).Build()!;

        metrics.RegisterCopyOnWrite(new FixedCowSource(new CopyOnWriteImageCounters
        {
            Image = "/var/lib/xendisk/images/a.qcow2",
            CopyUps = 7,
            CopiedBytes = 7 * 65536,
            MetadataWrites = 3,
            MetadataFlushes = 2,
            CacheHits = 90,
            CacheMisses = 10,
            OverlayAllocatedBytes = 1 << 20,
            HydrationProgress = 0.25,
        }));

        List<Sample> samples = PrometheusTextParser.Parse(exposition.Scrape());
        Assert.Equal(7, Assert.Single(samples, s => s.Name == "xendisk_cow_copy_ups_total").Value);
        Assert.Equal(7 * 65536, Assert.Single(samples, s => s.Name == "xendisk_cow_copied_bytes_total").Value);
        Assert.Equal(90, Assert.Single(samples, s => s.Name == "xendisk_cow_cache_lookups_total" && s.Labels["xendisk_cache_result"] == "hit").Value);
        Assert.Equal(1 << 20, Assert.Single(samples, s => s.Name == "xendisk_cow_overlay_allocated_bytes").Value);
        Assert.Equal(0.25, Assert.Single(samples, s => s.Name == "xendisk_cow_hydration_progress_ratio").Value);
        Assert.Equal("/var/lib/xendisk/images/a.qcow2", Assert.Single(samples, s => s.Name == "xendisk_cow_metadata_writes_total").Labels["xendisk_image"]);
    }

    private sealed class CountingSource : IDeviceStatusSource
    {
        public int Calls { get; private set; }

        public IReadOnlyList<DeviceStatus> GetDevices()
        {
            Calls++;
            return [];
        }
    }

    private sealed class FixedCowSource(CopyOnWriteImageCounters counters) : ICopyOnWriteMetricsSource
    {
        public IReadOnlyList<CopyOnWriteImageCounters> GetImages() => [counters];
    }

    private sealed class ManualTime : TimeProvider
    {
        private long _ticks;

        public override long TimestampFrequency => TimeSpan.TicksPerSecond;

        public override long GetTimestamp() => _ticks;

        public void Advance(TimeSpan by) => _ticks += by.Ticks;
    }
}
