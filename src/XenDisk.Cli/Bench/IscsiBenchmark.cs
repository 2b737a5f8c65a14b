using System.Globalization;
using System.Text.Json.Serialization;
using Microsoft.Extensions.Logging;
using XenDisk.Backend.ControlPlane;
using XenDisk.Backend.DataPlane;
using XenDisk.Cli.Commands.Image;
using XenDisk.Storage;
using XenDisk.Storage.Iscsi;
using XenDisk.TestFrontend;
using XenDisk.Xen.Simulated;

namespace XenDisk.Cli.Bench;

internal sealed record IscsiBenchSettings(string Url, TimeSpan Duration, int Rounds, int IoThreads, IReadOnlyList<string>? Only);

/// <summary>One configuration: XenDisk's full backend and qemu-img bench on the same LUN, medians over the rounds.</summary>
internal sealed record IscsiBenchConfiguration(
    string Name,
    string Workload,
    int QueueDepth,
    double XendiskIops,
    double QemuIops,
    double IopsRatio,
    double CpuUsPerRequest,
    double QemuCpuUsPerRequest,
    double CpuRatio,
    double? SyscallsPerRequest,
    double QemuSyscallsPerRequest,
    double? SyscallRatio,
    double ContextSwitchesPerRequest,
    double QemuContextSwitchesPerRequest);

internal sealed record IscsiBenchReport(
    string Lun,
    long SizeBytes,
    int Rounds,
    double SecondsPerRun,
    int IoThreadsPerRing,
    string Counting,
    string QemuCommand,
    IReadOnlyList<IscsiBenchConfiguration> Configurations);

[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(IscsiBenchReport))]
internal sealed partial class IscsiBenchJsonContext : JsonSerializerContext;

/// <summary>
/// The whole data path over an iSCSI LUN against QEMU's own libiscsi driver: the backend (simulated
/// hypervisor, test frontend, one queue) serving the LUN through <see cref="IscsiBlockDevice"/>, and
/// `qemu-img bench` on the same URL (Debian's qemu-block-extra), interleaved (XenDisk, qemu-img,
/// XenDisk, ...) with the median round reported. qemu-img bench issues sequential reads or writes
/// (offsets advance by the request size and wrap), so the configurations are sequential streams on
/// both sides. Per side: IOPS; CPU per request (XenDisk: the ring's threads and the session's event
/// loop, from /proc/self/task; qemu-img: perf's task-clock); system calls per request (perf stat -e
/// raw_syscalls:sys_enter, attached to XenDisk's threads or wrapping qemu-img); context switches per
/// request. qemu-img's start-up, login and exit are measured once per configuration by a run of one
/// request per slot and subtracted, so its figures are the steady state's, as XenDisk's are.
/// </summary>
internal static class IscsiBenchmark
{
    private const int DeviceId = 51712;
    private static readonly string[] XendiskThreads = ["blkif", "iscsi "];

    private const long Sectors4K = 4096 / 512;
    private const long Sectors64K = 65536 / 512;

    /// <summary>One configuration: <paramref name="Pages"/> 4 KiB pages per request, all reads or all writes, sequential.</summary>
    private sealed record Workload(string Name, string Description, int QueueDepth, bool Write, int Pages)
    {
        public int BlockBytes => Pages * 4096;

        public long StrideSectors => Pages == 1 ? Sectors4K : Pages * Sectors4K;
    }

    private static readonly Workload[] Workloads =
    [
        new("iscsi-seqread-4k-qd32", "4 KiB sequential reads", 32, Write: false, Pages: 1),
        new("iscsi-seqwrite-4k-qd32", "4 KiB sequential writes", 32, Write: true, Pages: 1),
        new("iscsi-seqread-4k-qd1", "4 KiB sequential reads, one at a time", 1, Write: false, Pages: 1),
        new("iscsi-seqread-64k-qd32", "64 KiB sequential reads (16 segments, indirect)", 32, Write: false, Pages: 16),
        new("iscsi-seqwrite-64k-qd32", "64 KiB sequential writes (16 segments, indirect)", 32, Write: true, Pages: 16),
    ];

    /// <summary>The configurations' names, which --only selects from.</summary>
    public static IReadOnlyList<string> ConfigurationNames { get; } = [.. Workloads.Select(w => w.Name)];

    private sealed record Side(double Iops, double CpuUsPerRequest, double? SyscallsPerRequest, double ContextSwitchesPerRequest);

    /// <summary>qemu-img's fixed cost (start-up, login, logout, exit), measured by a run of one request per slot.</summary>
    private sealed record Overhead(double CpuMilliseconds, double Syscalls, double ContextSwitches, long Requests);

    public static IscsiBenchReport Run(IscsiBenchSettings settings, ILoggerFactory loggerFactory, Action<string> progress, CancellationToken cancellationToken)
    {
        string qemuImg = ProcessRunner.Find("qemu-img") ?? throw new InvalidOperationException("qemu-img is not installed (Debian package qemu-utils)");
        string perf = ProcessRunner.Find("perf") is string found && StorageBenchmark.PerfWorks(found)
            ? found
            : throw new InvalidOperationException("bench iscsi counts qemu-img's CPU and system calls with perf: install linux-perf and run as root");
        IscsiUrl url = IscsiUrl.Parse(settings.Url);
        IscsiOptions options = ImageLuns.Options();
        long size;
        using (IscsiBlockDevice probe = IscsiBlockDevice.Open(url, readOnly: true, options))
        {
            size = probe.Info.SizeBytes;
        }

        string work = Directory.CreateTempSubdirectory("xendisk-bench-iscsi-").FullName;
        try
        {
            var results = new List<IscsiBenchConfiguration>();
            foreach (Workload workload in Workloads)
            {
                if (!ConfigurationFilter.Selects(settings.Only, workload.Name))
                {
                    continue;
                }

                Overhead overhead = MeasureQemuOverhead(qemuImg, perf, url, workload, work);
                var xendisk = new List<Side>();
                var peer = new List<Side>();
                for (int round = 0; round < settings.Rounds; round++)
                {
                    cancellationToken.ThrowIfCancellationRequested();
                    Side x = RunXenDisk(url, options, settings, workload, perf, loggerFactory, cancellationToken);
                    progress(Invariant($"{workload.Name} round {round + 1}: xendisk {x.Iops:F0} IOPS, {x.CpuUsPerRequest:F1} us CPU, {x.SyscallsPerRequest:F2} syscalls, {x.ContextSwitchesPerRequest:F2} cs per request"));
                    xendisk.Add(x);

                    // As many requests as XenDisk completed in its run, so both runs last about as long.
                    long count = Math.Max(20 * workload.QueueDepth, (long)(x.Iops * settings.Duration.TotalSeconds));
                    Side q = RunQemu(qemuImg, perf, url, workload, count, overhead, work);
                    progress(Invariant($"{workload.Name} round {round + 1}: qemu-img {q.Iops:F0} IOPS, {q.CpuUsPerRequest:F1} us CPU, {q.SyscallsPerRequest:F2} syscalls, {q.ContextSwitchesPerRequest:F2} cs per request"));
                    peer.Add(q);
                }

                Side xm = Median(xendisk);
                Side qm = Median(peer);
                results.Add(new IscsiBenchConfiguration(workload.Name, workload.Description, workload.QueueDepth,
                    Round(xm.Iops), Round(qm.Iops), Ratio(xm.Iops, qm.Iops),
                    Round(xm.CpuUsPerRequest), Round(qm.CpuUsPerRequest), Ratio(xm.CpuUsPerRequest, qm.CpuUsPerRequest),
                    xm.SyscallsPerRequest is double s ? Round(s) : null, Round(qm.SyscallsPerRequest ?? 0),
                    xm.SyscallsPerRequest is double s2 ? Ratio(s2, qm.SyscallsPerRequest ?? 0) : null,
                    Round(xm.ContextSwitchesPerRequest), Round(qm.ContextSwitchesPerRequest)));
            }

            return new IscsiBenchReport(url.ToString(), size, settings.Rounds, settings.Duration.TotalSeconds, settings.IoThreads,
                "perf stat -e raw_syscalls:sys_enter (XenDisk: attached to its ring and session threads; qemu-img: wrapping it, with task-clock and context-switches)",
                $"qemu-img bench -f raw -t none -d DEPTH -c N -s SIZE -S SIZE [-w] {url} (per configuration; N: the requests XenDisk completed in its run), under perf stat -e raw_syscalls:sys_enter,task-clock,context-switches",
                results);
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }

    private static Side RunXenDisk(IscsiUrl url, IscsiOptions options, IscsiBenchSettings settings, Workload workload, string perf, ILoggerFactory loggerFactory, CancellationToken cancellationToken) =>
        RunXenDiskAsync(url, options, settings, workload, perf, loggerFactory, cancellationToken).GetAwaiter().GetResult();

    private static async Task<Side> RunXenDiskAsync(IscsiUrl url, IscsiOptions options, IscsiBenchSettings settings, Workload workload, string perf, ILoggerFactory loggerFactory, CancellationToken cancellationToken)
    {
        using var hypervisor = new SimulatedHypervisor();
        using var toolstack = new SimulatedToolstack(hypervisor);
        var backendOptions = new BackendOptions
        {
            MaxQueues = 1,
            DataPlane = new DataPlaneOptions { IoThreadsPerRing = settings.IoThreads },
        };
        await using var backend = new BlockBackend(hypervisor.Platform(hypervisor.Dom0), new LunProvider(url, options), backendOptions, loggerFactory);
        await backend.StartAsync(cancellationToken).ConfigureAwait(false);
        var guest = hypervisor.CreateDomain("bench", memoryPages: 16384);
        var attachment = toolstack.AttachDisk(guest, DeviceId, url.ToString(), readOnly: false);
        await using var frontend = new BlockFrontend(hypervisor, guest, attachment, new FrontendOptions { Queues = 1 });
        await frontend.ConnectAsync(cancellationToken).ConfigureAwait(false);

        var load = new LoadGeneratorOptions
        {
            Depth = workload.QueueDepth,
            ReadPercent = workload.Write ? 0 : 100,
            WritePercent = workload.Write ? 100 : 0,
            PagesPerRequest = workload.Pages,
            StrideSectors = workload.StrideSectors,
        };
        using (var warmup = new FrontendLoadGenerator(frontend, load))
        {
            await warmup.RunAsync(TimeSpan.FromSeconds(1), cancellationToken).ConfigureAwait(false);
        }

        int[] threads = StorageBenchmark.ThreadsNamed(XendiskThreads);
        using var generator = new FrontendLoadGenerator(frontend, load);
        long switchesBefore = StorageBenchmark.ContextSwitches(threads);
        TimeSpan cpuBefore = Cpu();
        using var counter = StorageBenchmark.PerfCounter.AttachToThreads(perf, threads);
        LoadGeneratorResult result = await generator.RunAsync(settings.Duration, cancellationToken).ConfigureAwait(false);
        long? syscalls = counter.Stop();
        TimeSpan cpu = Cpu() - cpuBefore;
        long switches = StorageBenchmark.ContextSwitches(threads) - switchesBefore;

        await frontend.DisconnectAsync().ConfigureAwait(false);
        await toolstack.DetachDiskAsync(attachment, TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        await backend.StopAsync(cancellationToken).ConfigureAwait(false);
        if (result.Errors > 0)
        {
            throw new InvalidOperationException($"{result.Errors} requests failed in {workload.Name}");
        }

        double requests = Math.Max(1, result.Completions);
        return new Side(result.CompletionsPerSecond, cpu.TotalMicroseconds / requests, syscalls / requests, switches / requests);
    }

    private static TimeSpan Cpu() => XendiskThreads.Aggregate(TimeSpan.Zero, (sum, prefix) => sum + ThreadCpuClock.ThreadsNamed(prefix));

    /// <summary>
    /// qemu-img bench on the LUN through QEMU's libiscsi driver: raw, cache=none, the workload's depth,
    /// request size and direction, sequential (the step is the request size).
    /// </summary>
    private static List<string> QemuArguments(IscsiUrl url, Workload workload, long count)
    {
        List<string> arguments =
        [
            "bench", "-f", "raw", "-t", "none",
            "-d", workload.QueueDepth.ToString(CultureInfo.InvariantCulture),
            "-c", count.ToString(CultureInfo.InvariantCulture),
            "-s", workload.BlockBytes.ToString(CultureInfo.InvariantCulture),
            "-S", workload.BlockBytes.ToString(CultureInfo.InvariantCulture),
        ];
        if (workload.Write)
        {
            arguments.Add("-w");
        }

        arguments.Add(url.ToString());
        return arguments;
    }

    private static (double Seconds, double CpuMilliseconds, double Syscalls, double ContextSwitches) RunQemuOnce(string qemuImg, string perf, IscsiUrl url, Workload workload, long count, string work)
    {
        string perfOutput = Path.Combine(work, "perf.txt");
        (int exit, string output, string error) = ProcessRunner.Run(perf,
            ["stat", "-e", "raw_syscalls:sys_enter,task-clock,context-switches", "-x", ",", "-o", perfOutput, "--", qemuImg, .. QemuArguments(url, workload, count)]);
        if (exit != 0)
        {
            throw new InvalidOperationException($"qemu-img bench exited with {exit}: {error.Trim()} (QEMU's iSCSI driver is in Debian's qemu-block-extra)");
        }

        // "Run completed in 3.141 seconds.": qemu-img's own time for the requests alone.
        const string marker = "Run completed in ";
        int at = output.IndexOf(marker, StringComparison.Ordinal);
        int end = at < 0 ? -1 : output.IndexOf(' ', at + marker.Length);
        if (at < 0 || end < 0 || !double.TryParse(output.AsSpan(at + marker.Length, end - at - marker.Length), NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out double seconds))
        {
            throw new InvalidOperationException($"qemu-img bench printed no run time: {output.Trim()}");
        }

        string counts = File.ReadAllText(perfOutput);
        return (seconds,
            StorageBenchmark.PerfCounter.ParseEvent(counts, "task-clock") ?? throw new InvalidOperationException("perf reported no task-clock"),
            StorageBenchmark.PerfCounter.ParseEvent(counts, "raw_syscalls:sys_enter") ?? throw new InvalidOperationException("perf reported no system calls"),
            StorageBenchmark.PerfCounter.ParseEvent(counts, "context-switches") ?? 0);
    }

    private static Overhead MeasureQemuOverhead(string qemuImg, string perf, IscsiUrl url, Workload workload, string work)
    {
        // The smallest of three short runs: start-up costs vary with the machine's load, and the
        // least is the closest to what the long run paid.
        Overhead? best = null;
        for (int i = 0; i < 3; i++)
        {
            var (_, cpu, syscalls, switches) = RunQemuOnce(qemuImg, perf, url, workload, workload.QueueDepth, work);
            if (best is null || cpu < best.CpuMilliseconds)
            {
                best = new Overhead(cpu, syscalls, switches, workload.QueueDepth);
            }
        }

        return best!;
    }

    private static Side RunQemu(string qemuImg, string perf, IscsiUrl url, Workload workload, long count, Overhead overhead, string work)
    {
        var (seconds, cpu, syscalls, switches) = RunQemuOnce(qemuImg, perf, url, workload, count, work);
        double requests = Math.Max(1, count - overhead.Requests);
        return new Side(count / seconds,
            Math.Max(0, cpu - overhead.CpuMilliseconds) * 1000 / requests,
            Math.Max(0, syscalls - overhead.Syscalls) / requests,
            Math.Max(0, switches - overhead.ContextSwitches) / requests);
    }

    private static Side Median(List<Side> sides)
    {
        Side[] byIops = [.. sides.OrderBy(s => s.Iops)];
        return byIops[byIops.Length / 2];
    }

    private static double Ratio(double a, double b) => b == 0 ? 0 : Math.Round(a / b, 3);

    private static double Round(double value) => Math.Round(value, 3);

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);

    public static void WriteText(TextWriter output, IscsiBenchReport report)
    {
        output.WriteLine(Invariant($"iscsi bench: {report.Lun} ({report.SizeBytes >> 20} MiB), {report.Rounds} round(s) of {report.SecondsPerRun:F0} s, median round; {report.IoThreadsPerRing} I/O threads per ring"));
        output.WriteLine($"peer: {report.QemuCommand}");
        output.WriteLine(Invariant($"{"configuration",-26} {"xendisk IOPS",12} {"qemu IOPS",9} {"ratio",6} {"CPU us/req",15} {"ratio",6} {"syscalls/req",13} {"ratio",6} {"cs/req",11}"));
        foreach (IscsiBenchConfiguration c in report.Configurations)
        {
            output.WriteLine(Invariant($"{c.Name,-26} {c.XendiskIops,12:F0} {c.QemuIops,9:F0} {c.IopsRatio,6:F2} {c.CpuUsPerRequest,6:F1}/{c.QemuCpuUsPerRequest,-8:F1} {c.CpuRatio,6:F2} {c.SyscallsPerRequest,5:F2}/{c.QemuSyscallsPerRequest,-7:F2} {c.SyscallRatio,6:F2} {c.ContextSwitchesPerRequest,4:F2}/{c.QemuContextSwitchesPerRequest,-6:F2}"));
        }
    }

    /// <summary>Every target opens the benchmark's LUN (reserved under the one-off key while it is written, as the tools do).</summary>
    private sealed class LunProvider(IscsiUrl url, IscsiOptions options) : IDiskProvider
    {
        public IBlockDevice Open(DiskSpecification specification) => IscsiBlockDevice.Open(url, specification.ReadOnly, options);
    }
}
