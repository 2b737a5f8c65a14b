using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using XenDisk.Backend.ControlPlane;
using XenDisk.Backend.DataPlane;
using XenDisk.Cow.Overlays;
using XenDisk.Libc;
using XenDisk.Storage;
using XenDisk.TestFrontend;
using XenDisk.Xen.Simulated;

namespace XenDisk.Cli.Bench;

internal sealed record StorageBenchSettings(long SizeBytes, TimeSpan Duration, string? Directory, int Rounds, IoEngine Engine, IReadOnlyList<string>? Only, int IoThreadsPerRing, DataPath DataPath, int SubmissionBatch);

/// <summary>One configuration: XenDisk's full backend and fio on the same file, medians over the rounds.</summary>
internal sealed record StorageBenchConfiguration(
    string Name,
    string Workload,
    int QueueDepth,
    string Engine,
    double XendiskIops,
    double FioIops,
    double IopsRatio,
    double CpuUsPerRequest,
    double FioCpuUsPerRequest,
    double CpuRatio,
    double? SyscallsPerRequest,
    double? FioSyscallsPerRequest,
    double ContextSwitchesPerRequest,
    double FioContextSwitchesPerRequest,
    double FastPathShare,
    double? VsXendiskRaw,
    double FrontendCpuUsPerRequest,
    double? QemuIops = null,
    double? VsQemu = null,
    double? XendiskRawIops = null,
    double? VsXendiskRawSameBlocks = null,
    string? FioFile = null,
    IReadOnlyList<double>? IopsRatioRounds = null);

internal sealed record StorageBenchReport(
    long SizeBytes,
    string FileSystem,
    int Rounds,
    double SecondsPerRun,
    string DataPath,
    int SubmissionBatch,
    string SyscallCounting,
    string FioCommand,
    string? QemuCommand,
    IReadOnlyList<StorageBenchConfiguration> Configurations);

[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(StorageBenchReport))]
internal sealed partial class StorageBenchJsonContext : JsonSerializerContext;

/// <summary>
/// The whole data path against fio, in one process invocation: the backend (simulated hypervisor,
/// test frontend, one queue) serving a fully written file through the configured I/O engine, and fio
/// with io_uring at the same queue depth on the same file, interleaved (XenDisk, fio, XenDisk, fio,
/// ...) with the median round reported, since the storage's rate drifts between runs. Per side:
/// IOPS; CPU per request (the backend's own threads from /proc/self/task, fio's from its report; the
/// test frontend's thread, which plays the guest in the same process, reported apart);
/// system calls per request (perf stat -e raw_syscalls:sys_enter, attached to the backend's threads
/// or wrapping fio); context switches per request (voluntary plus involuntary, from /proc for the
/// backend, from fio's report). An allocated overlay's fio runs on the overlay's own data blocks,
/// and each of its rounds also serves the raw file, for its "vs raw".
/// </summary>
internal static class StorageBenchmark
{
    private const int DeviceId = 51712;
    /// <summary>The backend's threads: ring threads and slow-path I/O threads ("blkif ...", "blkif-io ..."), and
    /// the kernel's io_uring workers of the ring threads ("iou-wrk-TID"; only ring threads use io_uring
    /// in this process), which do an operation the ring thread could not issue without blocking.</summary>
    private static readonly string[] BackendThreadPrefixes = ["blkif", "iou-wrk-"];

    /// <summary>The test frontend's completion thread ("blkfront queue N"): the guest's side, not the backend's.</summary>
    private const string FrontendThreadPrefix = "blkfront";

    /// <summary>What XenDisk serves: the raw file itself, an overlay whose every cluster or grain is
    /// allocated, or an empty overlay over the raw file (made afresh for every round).</summary>
    private enum DiskKind
    {
        Raw,
        Bitmap,
        Qcow2,
        EmptyBitmap,
        EmptyQcow2,
    }

    /// <summary>
    /// One configuration. <paramref name="Pages"/>: 4 KiB pages per request (16 is 64 KiB, an indirect
    /// request). <paramref name="StrideSectors"/>: null for random offsets, else ascending offsets that
    /// far apart (fio's sequential rw=read/write, or rw=write:N for holes). <paramref name="FioRw"/>:
    /// fio's rw for the same pattern. First writes make one pass over the disk, for both sides.
    /// </summary>
    private sealed record Workload(string Name, string Description, int QueueDepth, int ReadPercent, DiskKind Disk = DiskKind.Raw,
        int Pages = 1, long? StrideSectors = null, string FioRw = "randrw")
    {
        public bool FirstWrite => Disk is DiskKind.EmptyBitmap or DiskKind.EmptyQcow2;

        public int BlockBytes => Pages * 4096;
    }

    private const long Sectors64K = 65536 / 512;

    private static readonly Workload[] Workloads =
    [
        new("raw-randrw-4k-qd32", "4 KiB random, 50% read / 50% write", 32, 50),
        new("raw-randrw-4k-qd1", "4 KiB random, 50% read / 50% write", 1, 50),
        new("raw-randread-4k-qd32", "4 KiB random reads", 32, 100),
        new("bitmap-allocated-randrw-4k-qd32", "4 KiB random, 50/50, bitmap overlay with every grain allocated", 32, 50, DiskKind.Bitmap),
        new("qcow2-allocated-randrw-4k-qd32", "4 KiB random, 50/50, qcow2 image with every cluster allocated", 32, 50, DiskKind.Qcow2),
        new("raw-seqread-64k-qd32", "64 KiB sequential reads (16 segments, indirect)", 32, 100, Pages: 16, StrideSectors: Sectors64K, FioRw: "read"),
        new("raw-seqwrite-64k-qd32", "64 KiB sequential writes (16 segments, indirect)", 32, 0, Pages: 16, StrideSectors: Sectors64K, FioRw: "write"),
        new("qcow2-firstwrite-4k-qd32", "first writes: 4 KiB into each 64 KiB cluster in turn of an empty qcow2 overlay (qemu-img, extended_l2) over the raw file; fio: the same writes on the raw file", 32, 0,
            DiskKind.EmptyQcow2, StrideSectors: Sectors64K, FioRw: "write:60k"),
        new("bitmap-firstwrite-4k-qd32", "first writes: 4 KiB every 64 KiB into an empty bitmap overlay over the raw file; fio: the same writes on the raw file", 32, 0,
            DiskKind.EmptyBitmap, StrideSectors: Sectors64K, FioRw: "write:60k"),
    ];

    /// <summary>The configurations' names, which --only selects from.</summary>
    public static IReadOnlyList<string> ConfigurationNames { get; } = [.. Workloads.Select(w => w.Name)];

    private sealed record Side(double Iops, double CpuUsPerRequest, double? SyscallsPerRequest, double ContextSwitchesPerRequest, double FastPathShare = 0, double FrontendCpuUsPerRequest = 0);

    public static StorageBenchReport Run(StorageBenchSettings settings, ILoggerFactory loggerFactory, Action<string> progress, CancellationToken cancellationToken)
    {
        string fio = ProcessRunner.Find("fio") ?? throw new InvalidOperationException("fio is not installed (Debian package fio; tools/setup installs it)");
        string? perf = ProcessRunner.Find("perf");
        string syscallCounting = perf is not null && PerfWorks(perf)
            ? "perf stat -e raw_syscalls:sys_enter"
            : "unavailable (perf or the raw_syscalls tracepoint is missing; install linux-perf and run as root)";
        if (!syscallCounting.StartsWith("perf", StringComparison.Ordinal))
        {
            perf = null;
        }

        string parent = settings.Directory ?? "/var/tmp";
        DirectoryInfo work = Directory.CreateDirectory(Path.Combine(parent, "xendisk-bench-storage-" + Environment.ProcessId.ToString(CultureInfo.InvariantCulture)));
        try
        {
            string file = Path.Combine(work.FullName, "disk.img");
            progress($"writing a {settings.SizeBytes >> 20} MiB file in {work.FullName}");
            FillFile(file, settings.SizeBytes);
            DropFromPageCache(file);

            var results = new List<StorageBenchConfiguration>();
            var images = new Dictionary<DiskKind, string> { [DiskKind.Raw] = file };
            foreach (Workload workload in Workloads)
            {
                if (!ConfigurationFilter.Selects(settings.Only, workload.Name))
                {
                    continue;
                }

                if (!workload.FirstWrite && !images.ContainsKey(workload.Disk))
                {
                    progress($"preparing a fully allocated {workload.Disk.ToString().ToLowerInvariant()} image");
                    images[workload.Disk] = PrepareImage(workload.Disk, file, work.FullName, settings.SizeBytes);
                    DropFromPageCache(images[workload.Disk]);
                }

                var xendisk = new List<Side>();
                var peer = new List<Side>();
                var qemu = new List<double>();

                // An allocated overlay is held against XenDisk's own raw figure, measured in the same
                // round (XenDisk and fio on the raw file again), so that both sides of the ratio see the
                // same minutes of a disk whose rate drifts; and fio runs on the overlay's own data blocks,
                // since a virtual disk's blocks need not run at one rate (fio alone has run 1.6x faster on
                // a hydrated bitmap overlay's data than on the raw file it was copied from).
                bool pairedWithRaw = workload.Disk != DiskKind.Raw && !workload.FirstWrite;
                FioTarget fioTarget = pairedWithRaw ? OverlayDataRun(workload.Disk, images[workload.Disk], settings.SizeBytes) ?? new FioTarget(file) : new FioTarget(file);
                var raw = new List<double>();
                var vsRaw = new List<double>();
                var vsRawSameBlocks = new List<double>();
                for (int round = 0; round < settings.Rounds; round++)
                {
                    cancellationToken.ThrowIfCancellationRequested();
                    string image = workload.FirstWrite ? PrepareImage(workload.Disk, file, work.FullName, settings.SizeBytes) : images[workload.Disk];
                    Side x = RunXenDisk(image, file, settings, workload, perf, loggerFactory, cancellationToken);
                    if (workload.FirstWrite)
                    {
                        File.Delete(image);
                    }

                    progress(Invariant($"{workload.Name} round {round + 1}: xendisk {x.Iops:F0} IOPS, {x.CpuUsPerRequest:F1} us CPU, {x.SyscallsPerRequest:F2} syscalls, {x.ContextSwitchesPerRequest:F2} cs per request"));
                    xendisk.Add(x);
                    Side f = RunFio(fio, perf, fioTarget, settings, workload, work.FullName);
                    progress(Invariant($"{workload.Name} round {round + 1}: fio {f.Iops:F0} IOPS, {f.CpuUsPerRequest:F1} us CPU, {f.SyscallsPerRequest:F2} syscalls, {f.ContextSwitchesPerRequest:F2} cs per request"));
                    peer.Add(f);
                    if (pairedWithRaw)
                    {
                        Workload rawTurn = workload with { Disk = DiskKind.Raw };
                        Side r = RunXenDisk(file, file, settings, rawTurn, perf, loggerFactory, cancellationToken);
                        Side fr = RunFio(fio, perf, new FioTarget(file), settings, rawTurn, work.FullName);
                        raw.Add(r.Iops);
                        vsRaw.Add(x.Iops / r.Iops);
                        vsRawSameBlocks.Add(x.Iops / f.Iops / (r.Iops / fr.Iops));
                        progress(Invariant($"{workload.Name} round {round + 1}: on the raw file xendisk {r.Iops:F0} IOPS, fio {fr.Iops:F0}: overlay/raw {vsRaw[^1]:F2}, each against fio on its own blocks {vsRawSameBlocks[^1]:F2}"));
                    }

                    if (workload.FirstWrite)
                    {
                        double q = RunQemuFirstWrites(file, work.FullName, settings, workload);
                        progress(Invariant($"{workload.Name} round {round + 1}: qemu-img bench {q:F0} IOPS"));
                        qemu.Add(q);
                    }
                }

                Side xm = Median(xendisk);
                Side fm = Median(peer);

                results.Add(new StorageBenchConfiguration(workload.Name, workload.Description, workload.QueueDepth, settings.Engine.ToString(),
                    Round(xm.Iops), Round(fm.Iops), Ratio(xm.Iops, fm.Iops), Round(xm.CpuUsPerRequest), Round(fm.CpuUsPerRequest),
                    Ratio(xm.CpuUsPerRequest, fm.CpuUsPerRequest), Round(xm.SyscallsPerRequest), Round(fm.SyscallsPerRequest),
                    Round(xm.ContextSwitchesPerRequest), Round(fm.ContextSwitchesPerRequest), Round(xm.FastPathShare),
                    pairedWithRaw ? Round(Median(vsRaw)) : null, Round(xm.FrontendCpuUsPerRequest),
                    qemu.Count > 0 ? Round(Median(qemu)) : null, qemu.Count > 0 ? Ratio(xm.Iops, Median(qemu)) : null,
                    pairedWithRaw ? Round(Median(raw)) : null, pairedWithRaw ? Round(Median(vsRawSameBlocks)) : null,
                    pairedWithRaw ? fioTarget.Describe() : null,
                    [.. xendisk.Zip(peer, (x, f) => Ratio(x.Iops, f.Iops))]));
            }

            return new StorageBenchReport(settings.SizeBytes, FileSystemOf(work.FullName), settings.Rounds, settings.Duration.TotalSeconds,
                settings.DataPath.ToString(), settings.SubmissionBatch, syscallCounting, "fio --ioengine=io_uring --direct=1 (rw, bs, iodepth per configuration; --time_based except first writes, which make one pass)",
                results.Any(r => r.QemuIops is not null) ? "qemu-img bench -w -t none -i io_uring -d 32 -s 4096 -S 65536 on a fresh qcow2 overlay of the file (" + QemuBestOptions + ")" : null,
                results);
        }
        finally
        {
            work.Delete(recursive: true);
        }
    }

    /// <summary>QEMU's best qcow2 configuration for first writes (`bench cow`): subclusters, so a 4 KiB write copies nothing up, and lazy refcounts.</summary>
    private const string QemuBestOptions = "cluster_size=64k,extended_l2=on,lazy_refcounts=on";

    /// <summary>
    /// First writes the way QEMU does them, as the issue's peer for allocation: qemu-img bench on a
    /// fresh qcow2 overlay of the file in QEMU's best configuration, one 4 KiB write into each 64 KiB
    /// cluster in turn at the same depth, O_DIRECT (-t none) through io_uring. Returns IOPS.
    /// </summary>
    private static double RunQemuFirstWrites(string baseFile, string directory, StorageBenchSettings settings, Workload workload)
    {
        string qemuImg = CowBenchmark.QemuImg.Find();
        string overlay = Path.Combine(directory, "qemu-first-writes.qcow2");
        try
        {
            CowBenchmark.QemuImg.CreateOverlay(qemuImg, overlay, baseFile, QemuBestOptions);
            long stride = (workload.StrideSectors ?? workload.Pages * 8L) * 512;
            long requests = settings.SizeBytes / stride;
            double seconds = CowBenchmark.QemuImg.RunBench(qemuImg, "qcow2", overlay, "io_uring", workload.QueueDepth, requests, workload.BlockBytes, stride, write: true, out string failure)
                ?? throw new InvalidOperationException(failure);
            return requests / seconds;
        }
        finally
        {
            File.Delete(overlay);
        }
    }

    private static Side RunXenDisk(string file, string baseFile, StorageBenchSettings settings, Workload workload, string? perf, ILoggerFactory loggerFactory, CancellationToken cancellationToken) =>
        RunXenDiskAsync(file, baseFile, settings, workload, perf, loggerFactory, cancellationToken).GetAwaiter().GetResult();

    private static async Task<Side> RunXenDiskAsync(string file, string baseFile, StorageBenchSettings settings, Workload workload, string? perf, ILoggerFactory loggerFactory, CancellationToken cancellationToken)
    {
        using var hypervisor = new SimulatedHypervisor();
        using var toolstack = new SimulatedToolstack(hypervisor);
        var options = new BackendOptions
        {
            MaxQueues = 1,
            // Grant copy maps no guest page, so there is nothing to keep mapped (the service's rule too).
            PersistentGrants = settings.DataPath == DataPath.GrantMap,
            DataPlane = new DataPlaneOptions { IoEngine = settings.Engine, IoThreadsPerRing = settings.IoThreadsPerRing, DataPath = settings.DataPath, SubmissionBatch = settings.SubmissionBatch },
        };
        await using var backend = new BlockBackend(hypervisor.Platform(hypervisor.Dom0), new ImageProvider(file, workload.Disk, baseFile), options, loggerFactory);
        await backend.StartAsync(cancellationToken).ConfigureAwait(false);
        var guest = hypervisor.CreateDomain("bench", memoryPages: 16384);
        var attachment = toolstack.AttachDisk(guest, DeviceId, file, readOnly: false);
        await using var frontend = new BlockFrontend(hypervisor, guest, attachment, new FrontendOptions { Queues = 1 });
        await frontend.ConnectAsync(cancellationToken).ConfigureAwait(false);

        var load = new LoadGeneratorOptions
        {
            Depth = workload.QueueDepth,
            ReadPercent = workload.ReadPercent,
            WritePercent = 100 - workload.ReadPercent,
            PagesPerRequest = workload.Pages,
            StrideSectors = workload.StrideSectors,
            SinglePass = workload.FirstWrite,
        };

        // A warm-up would allocate what a first-write run is there to measure: that run starts cold.
        if (!workload.FirstWrite)
        {
            using var warmup = new FrontendLoadGenerator(frontend, load);
            await warmup.RunAsync(TimeSpan.FromSeconds(1), cancellationToken).ConfigureAwait(false);
        }

        int[] threads = BackendThreads();
        Dictionary<int, (double Seconds, long Switches)> backendBefore = SampleBackend();
        RingStatistics[] rings = [.. backend.Devices.SelectMany(d => d.Queues).Select(q => q.Ring.Statistics)];
        long fastBefore = rings.Sum(r => r.FastPathRequests);
        using var generator = new FrontendLoadGenerator(frontend, load);
        TimeSpan frontendCpuBefore = ThreadCpuClock.ThreadsNamed(FrontendThreadPrefix);
        using PerfCounter? counter = perf is null ? null : PerfCounter.AttachToThreads(perf, threads);
        LoadGeneratorResult result = await generator.RunAsync(settings.Duration, cancellationToken).ConfigureAwait(false);
        long? syscalls = counter?.Stop();
        (TimeSpan cpu, long switches) = SinceSample(backendBefore);
        TimeSpan frontendCpu = ThreadCpuClock.ThreadsNamed(FrontendThreadPrefix) - frontendCpuBefore;
        long fast = rings.Sum(r => r.FastPathRequests) - fastBefore;

        await frontend.DisconnectAsync().ConfigureAwait(false);
        await toolstack.DetachDiskAsync(attachment, TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        await backend.StopAsync(cancellationToken).ConfigureAwait(false);

        double requests = Math.Max(1, result.Completions);
        if (result.Errors > 0)
        {
            throw new InvalidOperationException($"{result.Errors} requests failed in {workload.Name}");
        }

        return new Side(result.CompletionsPerSecond, cpu.TotalMicroseconds / requests, syscalls / requests, switches / requests, Math.Min(1, fast / requests),
            frontendCpu.TotalMicroseconds / requests);
    }

    /// <summary>Where fio runs: a whole file, or the run of an overlay's file that holds its guest data.</summary>
    private sealed record FioTarget(string File, long Offset = 0, long? Length = null)
    {
        /// <summary>For an overlay's row: its data run, or the raw file when the data is not one run.</summary>
        public string Describe() => Length is null
            ? "the raw file (the overlay's data is not one run of its file)"
            : Invariant($"{Path.GetFileName(File)}, bytes {Offset} to {Offset + Length}: the overlay's data");
    }

    /// <summary>
    /// The run of an allocated overlay's file that holds its whole disk, from the image's own map
    /// (`xendisk image map`): qemu-img's preallocation=full and a hydrated bitmap overlay lay the disk out
    /// in one run after their metadata. fio reads and writes there the blocks XenDisk moves, and no
    /// metadata. Null when the map is not one run of data covering the disk.
    /// </summary>
    private static FioTarget? OverlayDataRun(DiskKind kind, string image, long size)
    {
        OverlayFormat format = kind == DiskKind.Qcow2 ? OverlayFormat.Qcow2 : OverlayFormat.Bitmap;
        using RawBlockDevice device = RawBlockDevice.Open(image, readOnly: true);
        IReadOnlyList<OverlayExtent> map = format.Map(device);
        return map is [{ Kind: OverlayExtentKind.Data, Offset: 0, HostOffset: long host } only] && only.Length == size
            ? new FioTarget(image, host, size)
            : null;
    }

    private static Side RunFio(string fio, string? perf, FioTarget target, StorageBenchSettings settings, Workload workload, string directory)
    {
        string output = Path.Combine(directory, "fio.json");
        string perfOutput = Path.Combine(directory, "perf.txt");
        List<string> fioArgs =
        [
            "--name=peer", "--filename=" + target.File, "--direct=1", "--ioengine=io_uring",
            "--runtime=" + ((int)Math.Ceiling(settings.Duration.TotalSeconds)).ToString(CultureInfo.InvariantCulture),
            "--iodepth=" + workload.QueueDepth.ToString(CultureInfo.InvariantCulture),
            "--output-format=json", "--output=" + output, "--randrepeat=0",
            "--rw=" + workload.FioRw, "--bs=" + (workload.BlockBytes / 1024).ToString(CultureInfo.InvariantCulture) + "k",
        ];

        if (target.Length is long length)
        {
            fioArgs.AddRange(["--offset=" + target.Offset.ToString(CultureInfo.InvariantCulture), "--size=" + length.ToString(CultureInfo.InvariantCulture)]);
        }

        // First writes: one pass over the file, as XenDisk's run makes one pass over the empty overlay.
        fioArgs.AddRange(workload.FirstWrite ? [] : ["--time_based", "--ramp_time=1"]);
        if (workload.FioRw == "randrw")
        {
            fioArgs.Add("--rwmixread=" + workload.ReadPercent.ToString(CultureInfo.InvariantCulture));
        }

        (int exit, _, string error) = perf is null
            ? ProcessRunner.Run(fio, fioArgs)
            : ProcessRunner.Run(perf, ["stat", "-e", "raw_syscalls:sys_enter", "-x", ",", "-o", perfOutput, "--", fio, .. fioArgs]);
        if (exit != 0)
        {
            throw new InvalidOperationException($"fio exited with {exit}: {error.Trim()}");
        }

        using JsonDocument report = JsonDocument.Parse(File.ReadAllText(output));
        JsonElement job = report.RootElement.GetProperty("jobs")[0];
        double ios = job.GetProperty("read").GetProperty("total_ios").GetDouble() + job.GetProperty("write").GetProperty("total_ios").GetDouble();
        double runtimeSeconds = Math.Max(job.GetProperty("read").GetProperty("runtime").GetDouble(), job.GetProperty("write").GetProperty("runtime").GetDouble()) / 1000;
        double cpuSeconds = (job.GetProperty("usr_cpu").GetDouble() + job.GetProperty("sys_cpu").GetDouble()) / 100 * runtimeSeconds;
        double requests = Math.Max(1, ios);

        // perf counts fio's whole life (start-up and the ramp included) against its measured requests;
        // the ramp's requests are not in total_ios, so the figure errs high for fio, never low.
        double? syscalls = perf is null ? null : PerfCounter.ParseCount(File.ReadAllText(perfOutput)) / requests;
        return new Side(ios / runtimeSeconds, cpuSeconds * 1e6 / requests, syscalls, job.GetProperty("ctx").GetDouble() / requests);
    }

    /// <summary>A file of non-zero data, so that neither side reads holes.</summary>
    private static void FillFile(string path, long size)
    {
        using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize: 0);
        byte[] block = new byte[1 << 20];
        new Random(1).NextBytes(block);
        for (long written = 0; written < size; written += block.Length)
        {
            stream.Write(block, 0, (int)Math.Min(block.Length, size - written));
        }

        stream.Flush(flushToDisk: true);
    }

    /// <summary>
    /// Drops a file just written through the page cache (the raw file, qemu-img's preallocated image)
    /// from it. Both sides use O_DIRECT, and an O_DIRECT write that meets cached pages of its range
    /// cannot be issued without blocking (the pages are invalidated first): io_uring hands it to a
    /// worker thread. Left cached, the first rounds would measure that, not the steady state.
    /// </summary>
    private static void DropFromPageCache(string path)
    {
        using SafeFileHandle handle = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite);
        int fd = (int)handle.DangerousGetHandle();
        if (Tmds.Linux.LibC.fsync(fd) != 0)
        {
            throw new InvalidOperationException($"could not write {path} back: {Errno.Describe(Tmds.Linux.LibC.errno)}");
        }

        // posix_fadvise returns its error number instead of setting errno.
        int error = Tmds.Linux.LibC.posix_fadvise(fd, 0, 0, Tmds.Linux.LibC.POSIX_FADV_DONTNEED);
        if (error != 0)
        {
            throw new InvalidOperationException($"could not drop {path} from the page cache: {Errno.Describe(error)}");
        }
    }

    private static int[] BackendThreads() => ThreadsNamed(BackendThreadPrefixes);

    /// <summary>CPU time and context switches of each backend thread now, by thread id.</summary>
    private static Dictionary<int, (double Seconds, long Switches)> SampleBackend()
    {
        var sample = new Dictionary<int, (double, long)>();
        foreach (int id in BackendThreads())
        {
            sample[id] = (ThreadCpuClock.TaskSeconds($"/proc/self/task/{id}"), ContextSwitches([id]));
        }

        return sample;
    }

    /// <summary>
    /// What the backend's threads did since <paramref name="before"/>, thread by thread: an io_uring
    /// worker the kernel started within the window counts from zero; one that ended within it
    /// (idle workers exit after a few seconds) cannot be read and its share is missing.
    /// </summary>
    private static (TimeSpan Cpu, long Switches) SinceSample(Dictionary<int, (double Seconds, long Switches)> before)
    {
        double seconds = 0;
        long switches = 0;
        foreach ((int id, (double s, long c)) in SampleBackend())
        {
            (double s0, long c0) = before.TryGetValue(id, out var earlier) ? earlier : (0, 0);
            seconds += Math.Max(0, s - s0);
            switches += Math.Max(0, c - c0);
        }

        return (TimeSpan.FromSeconds(seconds), switches);
    }

    /// <summary>The ids of this process's threads whose name starts with one of <paramref name="prefixes"/>.</summary>
    internal static int[] ThreadsNamed(params string[] prefixes)
    {
        var ids = new List<int>();
        foreach (string task in Directory.EnumerateDirectories("/proc/self/task"))
        {
            try
            {
                string comm = File.ReadAllText(Path.Combine(task, "comm"));
                if (prefixes.Any(prefix => comm.StartsWith(prefix, StringComparison.Ordinal)))
                {
                    ids.Add(int.Parse(Path.GetFileName(task), CultureInfo.InvariantCulture));
                }
            }
            catch (IOException)
            {
                // The thread ended while we looked.
            }
        }

        return [.. ids];
    }

    /// <summary>voluntary_ctxt_switches + nonvoluntary_ctxt_switches of the given threads.</summary>
    internal static long ContextSwitches(int[] threads)
    {
        long total = 0;
        foreach (int id in threads)
        {
            try
            {
                foreach (string line in File.ReadLines($"/proc/self/task/{id}/status"))
                {
                    if (line.StartsWith("voluntary_ctxt_switches:", StringComparison.Ordinal) || line.StartsWith("nonvoluntary_ctxt_switches:", StringComparison.Ordinal))
                    {
                        total += long.Parse(line[(line.IndexOf(':') + 1)..].Trim(), CultureInfo.InvariantCulture);
                    }
                }
            }
            catch (IOException)
            {
                // The thread ended while we looked.
            }
        }

        return total;
    }

    internal static bool PerfWorks(string perf)
    {
        try
        {
            (int exit, _, _) = ProcessRunner.Run(perf, ["stat", "-e", "raw_syscalls:sys_enter", "-x", ",", "true"]);
            return exit == 0;
        }
        catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            return false;
        }
    }

    private static string FileSystemOf(string directory)
    {
        string best = "";
        string type = "unknown";
        foreach (string line in File.ReadLines("/proc/self/mountinfo"))
        {
            string[] fields = line.Split(' ');
            int separator = Array.IndexOf(fields, "-");
            if (fields.Length > 4 && separator > 0 && separator + 1 < fields.Length
                && directory.StartsWith(fields[4], StringComparison.Ordinal) && fields[4].Length > best.Length)
            {
                best = fields[4];
                type = fields[separator + 1];
            }
        }

        return type;
    }

    private static double Median(List<double> values) => values.Order().ElementAt(values.Count / 2);

    private static Side Median(List<Side> sides)
    {
        Side[] byIops = [.. sides.OrderBy(s => s.Iops)];
        return byIops[byIops.Length / 2];
    }

    private static double Ratio(double a, double b) => b == 0 ? 0 : Math.Round(a / b, 3);

    private static double Round(double value) => Math.Round(value, 3);

    private static double? Round(double? value) => value is null ? null : Math.Round(value.Value, 3);

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);

    public static void WriteText(TextWriter output, StorageBenchReport report)
    {
        output.WriteLine(Invariant($"storage bench: {report.SizeBytes >> 20} MiB file on {report.FileSystem}, {report.Rounds} round(s) of {report.SecondsPerRun:F0} s, median round; data path {report.DataPath}, submission batch {report.SubmissionBatch}; system calls: {report.SyscallCounting}"));
        output.WriteLine(Invariant($"{"configuration",-32} {"xendisk IOPS",12} {"fio IOPS",9} {"ratio",6} {"vs raw",6} {"vs qemu",7} {"CPU us/req",13} {"syscalls/req",13} {"cs/req",11} {"fast path",9} {"frontend CPU",12}"));
        foreach (StorageBenchConfiguration c in report.Configurations)
        {
            string vsRaw = c.VsXendiskRaw is { } v ? v.ToString("F2", CultureInfo.InvariantCulture) : "";
            string vsQemu = c.VsQemu is { } q ? q.ToString("F2", CultureInfo.InvariantCulture) : "";
            output.WriteLine(Invariant($"{c.Name,-32} {c.XendiskIops,12:F0} {c.FioIops,9:F0} {c.IopsRatio,6:F2} {vsRaw,6} {vsQemu,7} {c.CpuUsPerRequest,5:F1}/{c.FioCpuUsPerRequest,-7:F1} {c.SyscallsPerRequest,5:F2}/{c.FioSyscallsPerRequest,-7:F2} {c.ContextSwitchesPerRequest,4:F2}/{c.FioContextSwitchesPerRequest,-6:F2} {c.FastPathShare,9:P0} {c.FrontendCpuUsPerRequest,9:F1} us"));
        }

        if (report.Configurations.Any(c => c.VsXendiskRaw is not null))
        {
            output.WriteLine("vs raw: an allocated overlay against XenDisk serving the raw file with the same workload in the same rounds (median of the rounds' ratios); fio ran on the overlay's own data blocks:");
            foreach (StorageBenchConfiguration c in report.Configurations.Where(c => c.VsXendiskRaw is not null))
            {
                output.WriteLine(Invariant($"  {c.Name}: raw {c.XendiskRawIops:F0} IOPS, vs raw {c.VsXendiskRaw:F2}; each against fio on its own blocks, overlay over raw {c.VsXendiskRawSameBlocks:F2}; fio on {c.FioFile}"));
            }
        }

        if (report.QemuCommand is not null)
        {
            output.WriteLine("vs qemu: first writes against " + report.QemuCommand);
        }

        // The ratio above is median IOPS over median IOPS; the rounds' own ratios show how much of it
        // is this host's spread (a virtual disk's rate moves from hour to hour and round to round).
        if (report.Rounds > 1)
        {
            output.WriteLine("ratio round by round (each XenDisk round against the fio round after it):");
            foreach (StorageBenchConfiguration c in report.Configurations.Where(c => c.IopsRatioRounds is { Count: > 1 }))
            {
                output.WriteLine("  " + c.Name + ": " + string.Join(", ", c.IopsRatioRounds!.Select(r => r.ToString("F2", CultureInfo.InvariantCulture))));
            }
        }
    }

    /// <summary>
    /// The overlay images, with every cluster or grain allocated so that the run measures steady-state
    /// I/O through the overlay, not allocation: a bitmap overlay of the file, hydrated (every grain
    /// copied into it); a qcow2 image made by qemu-img with preallocation=full (every cluster
    /// allocated and written, as the fully written raw file is; falloc would leave the file system's
    /// extents unwritten, and the first write into each would pay their conversion). Returns the
    /// path the benchmark's provider opens.
    /// </summary>
    private static string PrepareImage(DiskKind kind, string baseFile, string directory, long size)
    {
        if (kind == DiskKind.EmptyBitmap)
        {
            string overlay = Path.Combine(directory, "empty.bitmap");
            XenDisk.Cow.Storage.OverlayFiles.CreateBitmapFile(overlay, XenDisk.Cow.Bitmap.BitmapOverlay.RequiredCowSize(size), XenDisk.Cow.Storage.FilePreallocation.Falloc);
            XenDisk.Cow.Bitmap.BitmapOverlay.Create(RawBlockDevice.Open(overlay, readOnly: false), RawBlockDevice.Open(baseFile, readOnly: true)).Dispose();
            return overlay;
        }

        if (kind == DiskKind.EmptyQcow2)
        {
            string qemu = ProcessRunner.Find("qemu-img") ?? throw new InvalidOperationException("qemu-img is not installed (Debian package qemu-utils)");
            string overlay = Path.Combine(directory, "empty.qcow2");
            (int status, _, string message) = ProcessRunner.Run(qemu,
                ["create", "-q", "-f", "qcow2", "-b", baseFile, "-F", "raw", "-o", "cluster_size=64k,extended_l2=on", overlay, size.ToString(CultureInfo.InvariantCulture)]);
            if (status != 0)
            {
                throw new InvalidOperationException($"qemu-img create failed: {message.Trim()}");
            }

            return overlay;
        }

        if (kind == DiskKind.Bitmap)
        {
            string overlay = Path.Combine(directory, "overlay.bitmap");
            XenDisk.Cow.Storage.OverlayFiles.CreateBitmapFile(overlay, XenDisk.Cow.Bitmap.BitmapOverlay.RequiredCowSize(size), XenDisk.Cow.Storage.FilePreallocation.Falloc);
            using var image = XenDisk.Cow.Bitmap.BitmapOverlay.Create(RawBlockDevice.Open(overlay, readOnly: false), RawBlockDevice.Open(baseFile, readOnly: true));
            if (image.Hydrate() != IoStatus.Ok)
            {
                throw new InvalidOperationException("hydrating the bitmap overlay failed");
            }

            return overlay;
        }

        string qemuImg = ProcessRunner.Find("qemu-img") ?? throw new InvalidOperationException("qemu-img is not installed (Debian package qemu-utils)");
        string qcow2 = Path.Combine(directory, "image.qcow2");
        (int exit, _, string error) = ProcessRunner.Run(qemuImg, ["create", "-q", "-f", "qcow2", "-o", "preallocation=full", qcow2, size.ToString(CultureInfo.InvariantCulture)]);
        if (exit != 0)
        {
            throw new InvalidOperationException($"qemu-img create failed: {error.Trim()}");
        }

        return qcow2;
    }

    /// <summary>Every target opens the benchmark's image, with O_DIRECT like fio's --direct=1.</summary>
    private sealed class ImageProvider(string path, DiskKind kind, string baseFile) : IDiskProvider
    {
        public IBlockDevice Open(DiskSpecification specification) => kind switch
        {
            DiskKind.Bitmap or DiskKind.EmptyBitmap => XenDisk.Cow.Bitmap.BitmapOverlay.Open(RawBlockDevice.Open(path, specification.ReadOnly), RawBlockDevice.Open(baseFile, readOnly: true)),
            DiskKind.Qcow2 or DiskKind.EmptyQcow2 => XenDisk.Cow.Qcow2.Qcow2Disk.Open(path, new XenDisk.Cow.Qcow2.Qcow2OpenOptions
            {
                ReadOnly = specification.ReadOnly,
                BackingPolicy = XenDisk.Cow.Policies.BackingFilePolicy.InDirectories(Path.GetDirectoryName(baseFile)!),
            }),
            _ => RawBlockDevice.Open(path, specification.ReadOnly),
        };
    }

    /// <summary>`perf stat -e raw_syscalls:sys_enter -t TIDS` attached for the measured window; stopped with SIGINT.</summary>
    internal sealed class PerfCounter : IDisposable
    {
        private readonly Process _process;
        private readonly string _output;

        private PerfCounter(Process process, string output)
        {
            _process = process;
            _output = output;
        }

        public static PerfCounter AttachToThreads(string perf, int[] threads)
        {
            string output = Path.GetTempFileName();
            Process process = ProcessRunner.Start(perf, ["stat", "-e", "raw_syscalls:sys_enter", "-x", ",", "-o", output, "-t", string.Join(',', threads)]);

            // perf says nothing when it has attached (its output comes when it stops); a few milliseconds
            // suffice, and requests made before it attaches are simply not counted (the figure errs low
            // by at most that share of a run of seconds).
            Thread.Sleep(200);
            return new PerfCounter(process, output);
        }

        public long? Stop()
        {
            if (!_process.HasExited)
            {
                Tmds.Linux.LibC.kill(_process.Id, Tmds.Linux.LibC.SIGINT);
            }

            _process.WaitForExit();
            return ParseCount(File.ReadAllText(_output));
        }

        public static long? ParseCount(string text) => ParseEvent(text, "raw_syscalls:sys_enter") is double count ? (long)count : null;

        /// <summary>One event's value from perf stat -x , output (value, unit, event, ...): a count, or msec for task-clock.</summary>
        public static double? ParseEvent(string text, string name)
        {
            foreach (string line in text.Split('\n'))
            {
                string[] fields = line.Split(',');
                if (fields.Length > 2 && fields[2] == name && double.TryParse(fields[0], NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out double value))
                {
                    return value;
                }
            }

            return null;
        }

        public void Dispose()
        {
            _process.Dispose();
            File.Delete(_output);
        }
    }
}
