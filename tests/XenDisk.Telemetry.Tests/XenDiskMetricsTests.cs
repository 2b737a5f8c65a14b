using XenDisk.Backend.ControlPlane;
using XenDisk.Backend.DataPlane;
using XenDisk.Telemetry.Collection;
using XenDisk.Telemetry.CopyOnWrite;
using XenDisk.TestFrontend;
using LatencyHistogram = XenDisk.Backend.DataPlane.LatencyHistogram;

namespace XenDisk.Telemetry.Tests;

[Collection(XenDiskMeterCollection.Name)]
public sealed class XenDiskMetricsTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Fact]
    public async Task Exported_histograms_and_counters_equal_the_requests_the_guest_made()
    {
        await using SimulatedBackend host = await SimulatedBackend.StartAsync();
        BlockFrontend frontend = await host.AttachGuestAsync("guest");

        using var meters = new TestMeterFactory();
        var collector = new BackendStatisticsCollector(new BlockBackendStatusSource(host.Backend), maximumAge: TimeSpan.Zero);
        using var metrics = new XenDiskMetrics(meters, collector);
        using var capture = new MetricCapture();
        Assert.Equal(frontend.QueueCount, metrics.AttachRings());
        Assert.Equal(0, metrics.AttachRings());

        await SimulatedBackend.WriteAndVerifyAsync(frontend, count: 12, seed: 1);
        Assert.Equal(0, await frontend.FlushAsync().WaitAsync(SimulatedBackend.Timeout));

        List<Point> points = capture.Collect();
        string device = Assert.Single(host.Backend.Devices).MetricsName;
        Assert.Equal("guest/51712", device);

        Point Of(string name, string operation) =>
            Assert.Single(points, p => p.Name == name && p.Tags[XenDiskMetricNames.DeviceAttribute] == device && p.Tags.GetValueOrDefault(XenDiskMetricNames.OperationAttribute) == operation);

        // One histogram point per device and operation that had requests; its count is the request count.
        Assert.Equal(12, Of(XenDiskMetricNames.RequestDuration, "write").Count);
        Assert.Equal(12, Of(XenDiskMetricNames.RequestDuration, "read").Count);
        Assert.Equal(1, Of(XenDiskMetricNames.RequestDuration, "flush").Count);
        Assert.DoesNotContain(points, p => p.Name == XenDiskMetricNames.RequestDuration && p.Tags[XenDiskMetricNames.OperationAttribute] == "discard");
        Point writes = Of(XenDiskMetricNames.RequestDuration, "write");
        Assert.Equal("s", writes.Unit);
        Assert.Equal(XenDiskMetricNames.LatencyBucketBounds, writes.Bounds[..^1]);
        Assert.Equal(12, writes.BucketCounts.Sum());
        // The sum is the data plane's own (live recording is exact), in seconds.
        long nanoseconds = host.Backend.Devices.Single().Queues.Sum(q => q.Ring.Statistics.Latency(RingOperation.Write).SumNanoseconds);
        Assert.Equal(nanoseconds / 1e9, writes.Sum, 9);

        Assert.Equal(12 * 4096, Of(XenDiskMetricNames.IoBytes, "write").Value);
        Assert.Equal(12 * 4096, Of(XenDiskMetricNames.IoBytes, "read").Value);
        Assert.Equal(0, Assert.Single(points, p => p.Name == XenDiskMetricNames.Errors && p.Tags["error.type"] == "guest").Value);
        Assert.Equal(1, Assert.Single(points, p => p.Name == XenDiskMetricNames.Devices && p.Tags[XenDiskMetricNames.DeviceStateAttribute] == "connected").Value);
        Assert.Equal(frontend.QueueCount, points.Count(p => p.Name == XenDiskMetricNames.RequestsInFlight));
        double sent = points.Where(p => p.Name == XenDiskMetricNames.Notifications && p.Tags[XenDiskMetricNames.NotificationOutcomeAttribute] == "sent").Sum(p => p.Value);
        Assert.True(sent >= 1, "a synchronous guest waits for every answer, so the backend must have notified it");

        // The ring threads' system calls: a synchronous guest lets each ring sleep in io_uring_enter
        // between its requests; a memory disk completes inline, so nothing takes the io_uring fast path.
        List<BlkifRing> rings = [.. host.Backend.Devices.Single().Queues.Select(q => q.Ring)];
        double engineCalls = points.Where(p => p.Name == XenDiskMetricNames.RingEngineCalls).Sum(p => p.Value);
        Assert.Equal(rings.Sum(r => r.Statistics.EngineCalls), engineCalls);
        Assert.True(rings.All(r => r.EngineName != "io_uring") || engineCalls >= 12, $"{engineCalls} io_uring_enter calls for 25 synchronous requests");
        Assert.Equal(0, points.Where(p => p.Name == XenDiskMetricNames.RingFastPathRequests).Sum(p => p.Value));
        Assert.Equal(frontend.QueueCount, points.Count(p => p.Name == XenDiskMetricNames.RingFastPathRequests));

        // The I/O threads the rings started: a memory disk completes inline and starts none.
        Assert.Equal(frontend.QueueCount, points.Count(p => p.Name == XenDiskMetricNames.RingIoThreads));
        Assert.Equal(0, points.Where(p => p.Name == XenDiskMetricNames.RingIoThreads).Sum(p => p.Value));

        // Batch sizes per queue: as many batches as the rings counted, and a synchronous guest sends one request at a time.
        long batches = host.Backend.Devices.Single().Queues.Sum(q => q.Ring.Statistics.Batches);
        List<Point> batchPoints = [.. points.Where(p => p.Name == XenDiskMetricNames.RingBatchSize)];
        Assert.All(batchPoints, p => Assert.Equal(device, p.Tags[XenDiskMetricNames.DeviceAttribute]));
        Assert.Equal(batches, batchPoints.Sum(p => p.Count));
        Assert.Equal(batches, batchPoints.Sum(p => p.Sum));
        Assert.Equal(batches, batchPoints.Sum(p => p.BucketCounts[1]));
    }

    [Fact]
    public async Task Requests_counted_before_the_ring_was_observed_are_replayed_into_their_buckets()
    {
        await using SimulatedBackend host = await SimulatedBackend.StartAsync();
        BlockFrontend frontend = await host.AttachGuestAsync("guest", new FrontendOptions { Queues = 1 });
        await SimulatedBackend.WriteAndVerifyAsync(frontend, count: 7, seed: 4);

        using var meters = new TestMeterFactory();
        var collector = new BackendStatisticsCollector(new BlockBackendStatusSource(host.Backend), maximumAge: TimeSpan.Zero);
        using var metrics = new XenDiskMetrics(meters, collector);
        using var capture = new MetricCapture();
        Assert.Equal(1, metrics.AttachRings());
        // The ring adopts the observer at its next request: the 7 earlier writes are replayed, then 3 more recorded.
        await SimulatedBackend.WriteAndVerifyAsync(frontend, count: 3, seed: 5);

        RingStatistics statistics = Assert.Single(Assert.Single(host.Backend.Devices).Queues).Ring.Statistics;
        Point writes = Assert.Single(capture.Collect(), p => p.Name == XenDiskMetricNames.RequestDuration && p.Tags[XenDiskMetricNames.OperationAttribute] == "write");
        Assert.Equal(10, writes.Count);
        Assert.Equal(10, statistics.Requests(RingOperation.Write));

        // Each exported bucket holds exactly the data plane's counts up to that bound (its bounds are
        // data-plane bounds; a duration equal to a bound is counted one bucket up by the data plane, below it by OTel).
        LatencyHistogram native = statistics.Latency(RingOperation.Write);
        long cumulativeExported = 0;
        for (int i = 0; i < writes.Bounds.Length - 1; i++)
        {
            cumulativeExported += writes.BucketCounts[i];
            long bound = (long)Math.Round(writes.Bounds[i] * 1e9);
            long cumulativeNative = Enumerable.Range(0, LatencyHistogram.BucketCount - 1)
                .Where(b => LatencyHistogram.UpperBoundNanoseconds(b) <= bound).Sum(native.BucketCountAt);
            Assert.Equal(cumulativeNative, cumulativeExported);
        }
    }

    [Fact]
    public void Recording_a_request_allocates_nothing()
    {
        using var meters = new TestMeterFactory();
        var collector = new BackendStatisticsCollector(new CountingSource());
        using var metrics = new XenDiskMetrics(meters, collector);
        using var capture = new MetricCapture();
        var observer = new RingObserver(metrics.RequestDurations, metrics.BatchSizes, "/local/domain/0/backend/vbd/1/51712", 0);
        const int Requests = 200_000;

        // Warm up: the SDK creates each series' point on first use.
        for (int i = 0; i < 1000; i++)
        {
            observer.RequestCompleted((RingOperation)(i % RingStatistics.OperationCount), true, 10_000 + i);
            observer.BatchTaken(1 + (i % 8));
        }

        long before = GC.GetAllocatedBytesForCurrentThread();
        long started = System.Diagnostics.Stopwatch.GetTimestamp();
        for (int i = 0; i < Requests; i++)
        {
            observer.RequestCompleted((RingOperation)(i % RingStatistics.OperationCount), true, 10_000 + i);
        }

        double nanosecondsPerRequest = System.Diagnostics.Stopwatch.GetElapsedTime(started).TotalNanoseconds / Requests;

        for (int i = 0; i < Requests; i++)
        {
            observer.BatchTaken(1 + (i % 8));
        }

        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
        // For the record, not asserted: the cost depends on the build, the machine and what else runs on it.
        output.WriteLine($"{nanosecondsPerRequest:F0} ns per recorded request");
        List<Point> points = capture.Collect();
        Assert.Equal(Requests + 1000, points.Where(p => p.Name == XenDiskMetricNames.RequestDuration).Sum(p => p.Count));
        Assert.Equal(Requests + 1000, Assert.Single(points, p => p.Name == XenDiskMetricNames.RingBatchSize).Count);
    }

    [Fact]
    public async Task A_rebooted_guests_disk_carries_on_in_its_series_and_leaves_no_stale_one_behind()
    {
        await using SimulatedBackend host = await SimulatedBackend.StartAsync();
        using var meters = new TestMeterFactory();
        var collector = new BackendStatisticsCollector(new BlockBackendStatusSource(host.Backend), maximumAge: TimeSpan.Zero);
        using var metrics = new XenDiskMetrics(meters, collector);
        using var capture = new MetricCapture();

        BlockFrontend first = await host.AttachGuestAsync("web");
        string firstPath = Assert.Single(host.Backend.Devices).BackendPath;
        metrics.AttachRings();
        await SimulatedBackend.WriteAndVerifyAsync(first, count: 4, seed: 1);

        // A reboot: the domain goes, a new one with the same name and a new domain id gets the disk.
        await host.DestroyGuestAsync(first);
        BlockFrontend second = await host.AttachGuestAsync("web");
        metrics.AttachRings();
        await SimulatedBackend.WriteAndVerifyAsync(second, count: 3, seed: 2);

        DeviceStatus now = Assert.Single(host.Backend.Devices, d => d.Queues.Count > 0);
        Assert.NotEqual(firstPath, now.BackendPath);
        Assert.Equal("web/51712", now.MetricsName);
        List<Point> points = capture.Collect();
        Assert.All(points.Where(p => p.Tags.ContainsKey(XenDiskMetricNames.DeviceAttribute)),
            p => Assert.Equal("web/51712", p.Tags[XenDiskMetricNames.DeviceAttribute]));
        Point writes = Assert.Single(points, p => p.Name == XenDiskMetricNames.RequestDuration && p.Tags[XenDiskMetricNames.OperationAttribute] == "write");
        Assert.Equal(7, writes.Count);
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
        using var capture = new MetricCapture();

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

        List<Point> points = capture.Collect();
        Assert.Equal(7, Assert.Single(points, p => p.Name == XenDiskMetricNames.CowCopyUps).Value);
        Assert.Equal(7 * 65536, Assert.Single(points, p => p.Name == XenDiskMetricNames.CowCopiedBytes).Value);
        Assert.Equal(90, Assert.Single(points, p => p.Name == XenDiskMetricNames.CowCacheLookups && p.Tags[XenDiskMetricNames.CacheResultAttribute] == "hit").Value);
        Assert.Equal(1 << 20, Assert.Single(points, p => p.Name == XenDiskMetricNames.CowOverlayAllocated).Value);
        Assert.Equal(0.25, Assert.Single(points, p => p.Name == XenDiskMetricNames.CowHydrationProgress).Value);
        Assert.Equal("/var/lib/xendisk/images/a.qcow2", Assert.Single(points, p => p.Name == XenDiskMetricNames.CowMetadataWrites).Tags[XenDiskMetricNames.ImageAttribute]);
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
