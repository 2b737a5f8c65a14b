using System.Diagnostics;
using Microsoft.Extensions.Logging;
using XenDisk.Backend.ControlPlane;
using XenDisk.Storage;
using XenDisk.TestFrontend;
using XenDisk.Xen.Simulated;

namespace XenDisk.Cli.Bench;

internal enum BenchDisk
{
    /// <summary>Completes at once without touching data: the data plane alone.</summary>
    Null,
    /// <summary>Completes at once with a memcpy per request.</summary>
    Memory,
}

internal sealed record RingBenchSettings(TimeSpan Duration, TimeSpan Warmup, int RingPageOrder, int ReadPercent, BenchDisk Disk, bool PersistentGrants, bool Telemetry = false, bool InflightRecord = false);

internal sealed record RingBenchResult(
    string Disk,
    int RingPageOrder,
    int RingEntries,
    int Depth,
    bool PersistentGrants,
    string Mix,
    double Seconds,
    long Requests,
    long Errors,
    double RequestsPerSecond,
    double BackendCpuNanosecondsPerRequest,
    double BackendCpuUtilisation,
    double ProcessCpuNanosecondsPerRequest,
    double AllocatedBytesPerRequest,
    double P50Microseconds,
    double P99Microseconds,
    long NotificationsSent,
    long NotificationsSuppressed,
    double AverageBatch,
    bool Telemetry,
    long? HistogramRequests,
    double? HistogramRecordNanoseconds,
    bool InflightRecord);

/// <summary>
/// The data plane alone: one guest, one queue, 4 KiB requests kept at full ring depth by the
/// frontend's closed-loop generator, against a disk that completes at once. Measures requests per
/// second, the ring thread's CPU time per request, and the bytes the whole process allocated per
/// request in steady state (after a warm-up, so tiering and first-use allocations are excluded).
/// </summary>
internal static class RingBenchmark
{
    private const long DiskBytes = 1L << 30;
    private const int DeviceId = 51712;

    public static async Task<RingBenchResult> RunAsync(RingBenchSettings settings, ILoggerFactory loggerFactory, CancellationToken cancellationToken)
    {
        using var hypervisor = new SimulatedHypervisor();
        using var toolstack = new SimulatedToolstack(hypervisor);
        var provider = new BenchDiskProvider(settings.Disk);

        // The in-flight record lives on tmpfs, as under systemd (/run/xendisk/inflight).
        string? inflight = settings.InflightRecord
            ? Directory.CreateDirectory($"/dev/shm/xendisk-bench-inflight-{Environment.ProcessId}").FullName
            : null;
        using var removeInflight = new DirectoryRemoval(inflight);
        await using var backend = new BlockBackend(hypervisor.Platform(hypervisor.Dom0), provider,
            new BackendOptions { MaxQueues = 1, InflightDirectory = inflight }, loggerFactory);
        await backend.StartAsync(cancellationToken).ConfigureAwait(false);

        var guest = hypervisor.CreateDomain("bench", memoryPages: 8192);
        var attachment = toolstack.AttachDisk(guest, DeviceId, "bench", readOnly: false);
        await using var frontend = new BlockFrontend(hypervisor, guest, attachment, new FrontendOptions
        {
            Queues = 1,
            RingPageOrder = settings.RingPageOrder,
            UseIndirect = false,
            UsePersistentGrants = settings.PersistentGrants,
        });
        await frontend.ConnectAsync(cancellationToken).ConfigureAwait(false);

        // The service's histograms, offered before the first request, as the service does when a device connects.
        using BenchTelemetry? telemetry = settings.Telemetry ? BenchTelemetry.Attach(backend) : null;

        var options = new LoadGeneratorOptions { ReadPercent = settings.ReadPercent, WritePercent = 100 - settings.ReadPercent };
        using (var warmup = new FrontendLoadGenerator(frontend, options))
        {
            await warmup.RunAsync(settings.Warmup, cancellationToken).ConfigureAwait(false);
        }

        var rings = backend.FindDevice(guest.Id, DeviceId)!.Queues.Select(q => q.Ring.Statistics).ToArray();
        long notifiedBefore = rings.Sum(r => r.NotificationsSent);
        long suppressedBefore = rings.Sum(r => r.NotificationsSuppressed);
        long batchesBefore = rings.Sum(r => r.Batches);
        long requestsBefore = rings.Sum(r => r.Requests(XenDisk.Backend.DataPlane.RingOperation.Read) + r.Requests(XenDisk.Backend.DataPlane.RingOperation.Write));

        using var generator = new FrontendLoadGenerator(frontend, options);
        GC.Collect();
        GC.WaitForPendingFinalizers();
        long allocatedBefore = GC.GetTotalAllocatedBytes(precise: true);
        var backendCpuBefore = ThreadCpuClock.ThreadsNamed("blkif ");
        var processCpuBefore = Process.GetCurrentProcess().TotalProcessorTime;
        var result = await generator.RunAsync(settings.Duration, cancellationToken).ConfigureAwait(false);
        var processCpu = Process.GetCurrentProcess().TotalProcessorTime - processCpuBefore;
        var backendCpu = ThreadCpuClock.ThreadsNamed("blkif ") - backendCpuBefore;
        long allocated = GC.GetTotalAllocatedBytes(precise: true) - allocatedBefore;

        long requests = rings.Sum(r => r.Requests(XenDisk.Backend.DataPlane.RingOperation.Read) + r.Requests(XenDisk.Backend.DataPlane.RingOperation.Write)) - requestsBefore;
        long batches = rings.Sum(r => r.Batches) - batchesBefore;
        var negotiated = frontend.NegotiatedFrontendFeatures;
        double completions = Math.Max(1, result.Completions);
        var benchResult = new RingBenchResult(
            settings.Disk.ToString().ToLowerInvariant(), negotiated.RingPageOrder, negotiated.RingEntries, generator.Depth, negotiated.PersistentGrants,
            $"{settings.ReadPercent}% read / {100 - settings.ReadPercent}% write, 4 KiB",
            result.Elapsed.TotalSeconds, result.Completions, result.Errors, result.CompletionsPerSecond,
            backendCpu.TotalNanoseconds / completions, backendCpu / result.Elapsed,
            processCpu.TotalNanoseconds / completions, allocated / completions,
            result.Latency.Percentile(50).TotalMicroseconds, result.Latency.Percentile(99).TotalMicroseconds,
            rings.Sum(r => r.NotificationsSent) - notifiedBefore, rings.Sum(r => r.NotificationsSuppressed) - suppressedBefore,
            batches == 0 ? 0 : (double)requests / batches,
            settings.Telemetry, telemetry?.CollectRequestCount(), telemetry?.MeasureRecordNanoseconds(2_000_000), settings.InflightRecord);

        await frontend.DisconnectAsync().ConfigureAwait(false);
        await toolstack.DetachDiskAsync(attachment, TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        await backend.StopAsync(cancellationToken).ConfigureAwait(false);
        return benchResult;
    }

    private sealed class DirectoryRemoval(string? path) : IDisposable
    {
        public void Dispose()
        {
            if (path is not null && Directory.Exists(path))
            {
                Directory.Delete(path, recursive: true);
            }
        }
    }

    /// <summary>Every target opens the benchmark's in-memory disk.</summary>
    private sealed class BenchDiskProvider(BenchDisk disk) : IDiskProvider
    {
        public IBlockDevice Open(DiskSpecification specification) => disk switch
        {
            BenchDisk.Null => new NullBlockDevice(DiskBytes),
            _ => new MemoryBlockDevice(DiskBytes),
        };
    }
}
