using System.Globalization;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Metrics;
using XenDisk.Cow;
using XenDisk.Cow.Bitmap;
using XenDisk.Service.Hosting;
using XenDisk.Service.Simulation;
using XenDisk.Service.Storage;
using XenDisk.Service.Telemetry;
using XenDisk.Service.Tests.Support;
using XenDisk.Storage;
using XenDisk.Telemetry;
using XenDisk.Telemetry.CopyOnWrite;

namespace XenDisk.Service.Tests;

/// <summary>The copy-on-write engine's counters reach telemetry: the source follows the open overlays, and the service's metrics export them.</summary>
[Collection(ProcessWideCollection.Name)]
public sealed class CopyOnWriteMetricsTests : IDisposable
{
    private const int BaseSize = 1 << 20;

    private readonly TempDirectory _work = new("xendisk-cow-metrics-");

    public CopyOnWriteMetricsTests()
    {
        Images = Directory.CreateDirectory(Path.Combine(_work.Path, "images")).FullName;
        BasePath = Path.Combine(Images, "golden.img");
        var contents = new byte[BaseSize];
        new Random(1).NextBytes(contents);
        File.WriteAllBytes(BasePath, contents);
    }

    private string Images { get; }

    private string BasePath { get; }

    public void Dispose() => _work.Dispose();

    private static void Write(IBlockDevice device, long offset, int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        Assert.Equal(IoStatus.Ok, device.WriteAt(offset, data));
    }

    [Fact]
    public void The_source_reports_an_open_cow_overlay_and_forgets_it_after_dispose()
    {
        var provider = new ImageDiskProvider(new ImageDirectoryPolicy([Images], allowBlockDevices: false));
        var source = new CopyOnWriteMetricsSource(provider.GetOpenOverlays);
        string overlay = Path.Combine(Images, "guest.qcow2");

        using (IBlockDevice raw = provider.Open(new DiskSpecification("raw:" + BasePath, ReadOnly: true)))
        {
            Assert.Empty(source.GetImages());
        }

        using (IBlockDevice device = provider.Open(new DiskSpecification($"cow:{BasePath},{overlay},format=qcow2", ReadOnly: false)))
        {
            // 64 KiB clusters with 2 KiB subclusters: 4 KiB written 1 KiB into a cluster completes two subclusters from the base.
            Write(device, 65536 + 1024, 4096, seed: 2);
            Assert.Equal(IoStatus.Ok, device.Flush());

            CopyOnWriteImageCounters image = Assert.Single(source.GetImages());
            OverlayStatistics statistics = Assert.Single(provider.GetOpenOverlays()).Statistics;
            Assert.Equal(overlay, image.Image);
            Assert.Equal(2, image.CopyUps);
            Assert.Equal(2048, image.CopiedBytes);
            Assert.Equal(statistics.MetadataWrites, image.MetadataWrites);
            Assert.True(image.MetadataWrites > 0, "the flush wrote the new L2 table back");
            Assert.True(image.MetadataFlushes > 0);
            Assert.Equal(statistics.OverlayAllocatedBytes, image.OverlayAllocatedBytes);
            Assert.True(image.OverlayAllocatedBytes >= 65536 * 2, "the overlay holds at least its header and the new data cluster");
            Assert.Null(image.HydrationProgress);
        }

        Assert.Empty(source.GetImages());
        Assert.Empty(provider.GetOpenOverlays());
    }

    [Fact]
    public async Task The_service_exports_the_copy_on_write_series_of_its_open_overlays()
    {
        int port = ServiceHostTests.FreePort();
        var options = new ServeOptions
        {
            Simulation = new SimulatedServicePlatform(),
            UseEnvironment = false,
            ConfigPath = Path.Combine(_work.Path, "absent.json"),
            MinimumLogLevel = LogLevel.Warning,
            ConfigurationOverrides = new Dictionary<string, string?>
            {
                ["Control:SocketPath"] = Path.Combine(_work.Path, "control.sock"),
                ["Telemetry:Prometheus:ListenAddress"] = $"http://127.0.0.1:{port}/metrics",
                ["Simulation:ImageDirectory"] = Images,
            },
        };
        using IHost host = XenDiskServiceHost.Build(options, XenDiskServiceHost.BuildConfiguration(options), platform: null);
        IDiskProvider disks = host.Services.GetRequiredService<IDiskProvider>();
        XenDiskMetrics metrics = host.Services.GetRequiredService<XenDiskMetrics>();
        // Resolving the provider starts the Prometheus listener; the host itself (the backend) need not run.
        Assert.NotNull(host.Services.GetRequiredService<MeterProvider>());
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}/"), Timeout = TimeSpan.FromSeconds(10) };

        string qcow2 = Path.Combine(Images, "a.qcow2");
        string bitmap = Path.Combine(Images, "b.cow");
        IBlockDevice first = disks.Open(new DiskSpecification($"cow:{BasePath},{qcow2},format=qcow2", ReadOnly: false));
        IBlockDevice second = disks.Open(new DiskSpecification($"cow:{BasePath},{bitmap},format=bitmap,grain=16k", ReadOnly: false));
        try
        {
            Write(first, 1024, 4096, seed: 3);
            Assert.Equal(IoStatus.Ok, first.Flush());
            // 4 KiB, 4 KiB into a 16 KiB grain: one copy-up of the other 12 KiB.
            Write(second, 16384 + 4096, 4096, seed: 4);
            Assert.Equal(IoStatus.Ok, Assert.IsType<BitmapOverlay>(second).Hydrate());
            OverlayStatistics a = ((ICopyOnWriteImage)first).Statistics;
            OverlayStatistics b = ((ICopyOnWriteImage)second).Statistics;

            string text = await http.GetStringAsync("metrics");

            Assert.Contains("# TYPE xendisk_cow_copy_ups_total counter", text, StringComparison.Ordinal);
            Assert.Equal(2, Value(text, "xendisk_cow_copy_ups_total", qcow2));
            Assert.Equal(2048, Value(text, "xendisk_cow_copied_bytes_total", qcow2));
            Assert.Equal(a.MetadataWrites, Value(text, "xendisk_cow_metadata_writes_total", qcow2));
            Assert.Equal(a.MetadataFlushes, Value(text, "xendisk_cow_metadata_flushes_total", qcow2));
            Assert.True(a.MetadataWrites > 0 && a.MetadataFlushes > 0);
            Assert.Equal(a.CacheHits, Value(text, "xendisk_cow_cache_lookups_total", qcow2, "xendisk_cache_result=\"hit\""));
            Assert.Equal(a.CacheMisses, Value(text, "xendisk_cow_cache_lookups_total", qcow2, "xendisk_cache_result=\"miss\""));
            Assert.Equal(a.OverlayAllocatedBytes, Value(text, "xendisk_cow_overlay_allocated_bytes", qcow2));
            Assert.DoesNotContain(Series("xendisk_cow_hydration_progress", qcow2), text, StringComparison.Ordinal);

            Assert.Equal(1, Value(text, "xendisk_cow_copy_ups_total", bitmap));
            // The copy-up, then hydration: every other grain of the base.
            Assert.Equal(12288 + BaseSize - 16384, Value(text, "xendisk_cow_copied_bytes_total", bitmap));
            Assert.Equal(b.CopiedBytes, Value(text, "xendisk_cow_copied_bytes_total", bitmap));
            Assert.Equal(BaseSize, Value(text, "xendisk_cow_overlay_allocated_bytes", bitmap));
            Assert.Equal(1, Value(text, "xendisk_cow_hydration_progress", bitmap));
            Assert.Equal(0, Value(text, "xendisk_cow_cache_lookups_total", bitmap, "xendisk_cache_result=\"miss\""));
        }
        finally
        {
            first.Dispose();
            second.Dispose();
        }

        // Closed overlays are no longer observed: their series end.
        string after = await http.GetStringAsync("metrics");
        Assert.DoesNotContain($"xendisk_image=\"{qcow2}\"", after, StringComparison.Ordinal);
        Assert.DoesNotContain($"xendisk_image=\"{bitmap}\"", after, StringComparison.Ordinal);
    }

    private static string Series(string name, string image) => $"{name}{{xendisk_image=\"{image}\"";

    /// <summary>The value of the one sample of <paramref name="name"/> for <paramref name="image"/> (and <paramref name="label"/>, if given).</summary>
    private static double Value(string exposition, string name, string image, string? label = null)
    {
        string prefix = name + "{";
        string imageLabel = $"xendisk_image=\"{image}\"";
        string line = Assert.Single(exposition.Split('\n'), l => l.StartsWith(prefix, StringComparison.Ordinal)
            && l.Contains(imageLabel, StringComparison.Ordinal)
            && (label is null || l.Contains(label, StringComparison.Ordinal)));
        string[] fields = line[(line.IndexOf('}', StringComparison.Ordinal) + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        return double.Parse(fields[0], CultureInfo.InvariantCulture);
    }
}
