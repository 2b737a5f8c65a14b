using System.Diagnostics;
using System.Globalization;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Storage;

namespace XenDisk.Cli.Bench;

internal sealed record CowBenchSettings(long SizeBytes, TimeSpan TargetRunTime, string? Directory, int QueueDepth = CowBenchmark.DefaultQueueDepth,
    IReadOnlyList<string>? Only = null, int Rounds = 1)
{
    /// <summary>Whether a configuration runs: all of them, or those whose name contains one of <see cref="Only"/>.</summary>
    public bool Includes(string configurationName) => ConfigurationFilter.Selects(Only, configurationName);
}

/// <summary>One measured run: a phase on one configuration.</summary>
internal sealed record CowBenchRun(
    string Phase,
    long Requests,
    double Seconds,
    double Iops,
    long Errors,
    string? Failure,
    double? VsQemuBest,
    double? VsRaw);

/// <summary>One engine and configuration with its runs, one per phase.</summary>
internal sealed record CowBenchConfiguration(
    string Name,
    string Engine,
    string Format,
    string? Policy,
    string Options,
    IReadOnlyList<CowBenchRun> Runs);

internal sealed record CowBenchReport(
    long SizeBytes,
    long Requests,
    int QueueDepth,
    int ClusterSize,
    string Directory,
    string FileSystem,
    string QemuVersion,
    string QemuCommand,
    int Rounds,
    IReadOnlyList<string> Phases,
    IReadOnlyList<CowBenchConfiguration> Configurations)
{
    public long Errors => Configurations.Sum(c => c.Runs.Sum(r => r.Errors + (r.Failure != null ? 1 : 0)));
}

/// <summary>
/// Copy-on-write cost against QEMU, on the same storage in the same run. A base of the given size is
/// fully written with non-zero data; then, for XenDisk's engine (qcow2 under each metadata policy, and
/// the flat bitmap overlay), for QEMU's qcow2 driver through `qemu-img bench` (with and without
/// extended L2 entries and lazy refcounts) and for raw storage, four phases run with the same
/// requests at the same queue depth:
/// <list type="number">
/// <item>first-write-4k: 4 KiB writes into an empty overlay, one per 64 KiB cluster, so every write
/// allocates and copies up the rest of its cluster (or subcluster) from the base;</item>
/// <item>rewrite-4k: the same writes again, now into allocated data (the overlay reopened, as QEMU's is);</item>
/// <item>read-base-4k: 4 KiB reads, one per cluster, through a fresh overlay to the base;</item>
/// <item>seq-write-64k: 64 KiB writes, whole clusters, into that overlay.</item>
/// </list>
/// qemu-img bench issues its requests at ascending offsets (offset, offset + step, ...), so XenDisk's
/// workers take the same offsets in the same order: the clusters touched, and so the allocation and
/// copy-up work, are identical. Each cluster is touched once per phase, as a random first write would
/// touch it; what is not reproduced is a random order, which qemu-img bench cannot issue.
/// XenDisk's side runs the engine over O_DIRECT files (as qemu-img's -t none) from QueueDepth threads,
/// each with one synchronous request in flight, as the backend's I/O workers call it.
/// </summary>
internal static partial class CowBenchmark
{
    public const int DefaultQueueDepth = 32;

    /// <summary>QEMU's default cluster size, and the stride that puts every request in its own cluster.</summary>
    public const int ClusterSize = 64 * 1024;

    private const int SmallRequest = 4096;

    /// <summary>Calibration reads (to size the runs to the target time) stop after this long.</summary>
    private static readonly TimeSpan CalibrationTime = TimeSpan.FromMilliseconds(500);

    /// <summary>The fewest requests per run (when the disk has that many clusters): fewer say little at queue depth 32.</summary>
    private const long MinimumRequests = 1024;

    internal enum Phase
    {
        FirstWrite4K,
        Rewrite4K,
        ReadBase4K,
        SequentialWrite64K,
    }

    internal static readonly Phase[] Phases = [Phase.FirstWrite4K, Phase.Rewrite4K, Phase.ReadBase4K, Phase.SequentialWrite64K];

    internal static string PhaseName(Phase phase) => phase switch
    {
        Phase.FirstWrite4K => "first-write-4k",
        Phase.Rewrite4K => "rewrite-4k",
        Phase.ReadBase4K => "read-base-4k",
        _ => "seq-write-64k",
    };

    private static (int BufferSize, bool Write) Shape(Phase phase) => phase switch
    {
        Phase.ReadBase4K => (SmallRequest, false),
        Phase.SequentialWrite64K => (ClusterSize, true),
        _ => (SmallRequest, true),
    };

    private enum Engine
    {
        XenDisk,
        Qemu,
    }

    private enum Layout
    {
        Qcow2,
        Bitmap,
        Raw,
    }

    /// <summary>One configuration under test.</summary>
    private sealed record Configuration(string Name, Engine Engine, Layout Layout, MetadataPolicy? Policy, bool ExtendedL2, bool LazyRefcounts,
        FilePreallocation BitmapFile = FilePreallocation.Full)
    {
        public string Options => Layout switch
        {
            Layout.Qcow2 => $"cluster_size=64k,extended_l2={(ExtendedL2 ? "on" : "off")},lazy_refcounts={(LazyRefcounts ? "on" : "off")}",
            Layout.Bitmap => $"grain=4k,preallocation={BitmapFile.ToString().ToLowerInvariant()}",
            _ => "",
        };
    }

    /// <summary>QEMU's peers first, XenDisk's configurations next, raw last (its writes go into the base, which nothing needs afterwards).</summary>
    private static readonly Configuration[] Configurations =
    [
        new("qemu qcow2", Engine.Qemu, Layout.Qcow2, null, ExtendedL2: false, LazyRefcounts: false),
        new("qemu qcow2 extended_l2", Engine.Qemu, Layout.Qcow2, null, ExtendedL2: true, LazyRefcounts: false),
        new("qemu qcow2 lazy_refcounts", Engine.Qemu, Layout.Qcow2, null, ExtendedL2: false, LazyRefcounts: true),
        new("qemu qcow2 extended_l2 lazy_refcounts", Engine.Qemu, Layout.Qcow2, null, ExtendedL2: true, LazyRefcounts: true),
        new("xendisk qcow2 flush", Engine.XenDisk, Layout.Qcow2, MetadataPolicy.Flush, ExtendedL2: true, LazyRefcounts: false),
        new("xendisk qcow2 sync", Engine.XenDisk, Layout.Qcow2, MetadataPolicy.Sync, ExtendedL2: true, LazyRefcounts: false),
        new("xendisk qcow2 lazy", Engine.XenDisk, Layout.Qcow2, MetadataPolicy.Lazy, ExtendedL2: true, LazyRefcounts: true),
        new("xendisk qcow2 transient", Engine.XenDisk, Layout.Qcow2, MetadataPolicy.Transient, ExtendedL2: true, LazyRefcounts: false),
        new("xendisk qcow2 flush no-extended_l2", Engine.XenDisk, Layout.Qcow2, MetadataPolicy.Flush, ExtendedL2: false, LazyRefcounts: false),
        new("xendisk bitmap flush", Engine.XenDisk, Layout.Bitmap, MetadataPolicy.Flush, ExtendedL2: false, LazyRefcounts: false),
        new("xendisk bitmap flush falloc-file", Engine.XenDisk, Layout.Bitmap, MetadataPolicy.Flush, ExtendedL2: false, LazyRefcounts: false, FilePreallocation.Falloc),
        new("qemu raw", Engine.Qemu, Layout.Raw, null, ExtendedL2: false, LazyRefcounts: false),
        new("xendisk raw", Engine.XenDisk, Layout.Raw, null, ExtendedL2: false, LazyRefcounts: false),
    ];

    /// <summary>The configurations' names, which --only selects from.</summary>
    public static IReadOnlyList<string> ConfigurationNames { get; } = [.. Configurations.Select(c => c.Name)];

    /// <summary>
    /// Runs the benchmark. <paramref name="log"/> receives a line per step (for stderr). Throws
    /// <see cref="CowBenchException"/> when it cannot run (qemu-img missing, tmpfs, no space).
    /// </summary>
    public static CowBenchReport Run(CowBenchSettings settings, Action<string> log, CancellationToken cancellationToken)
    {
        string qemuImg = QemuImg.Find();
        string parent = settings.Directory ?? (System.IO.Directory.Exists("/var/tmp") ? "/var/tmp" : Path.GetTempPath());
        string fileSystem = FileSystems.TypeOf(parent);
        if (fileSystem is "tmpfs" or "ramfs")
        {
            throw new CowBenchException($"{parent} is on {fileSystem}, which is memory: the benchmark measures storage. Give --dir on a disk-backed file system.");
        }
        string directory = Path.Combine(parent, "xendisk-bench-cow-" + Guid.NewGuid().ToString("N")[..12]);
        System.IO.Directory.CreateDirectory(directory);
        try
        {
            return RunIn(directory, fileSystem, qemuImg, settings, log, cancellationToken);
        }
        finally
        {
            try
            {
                System.IO.Directory.Delete(directory, recursive: true);
            }
            catch (IOException e)
            {
                log($"could not remove {directory}: {e.Message}");
            }
        }
    }

    private static CowBenchReport RunIn(string directory, string fileSystem, string qemuImg, CowBenchSettings settings, Action<string> log, CancellationToken cancellationToken)
    {
        string basePath = Path.Combine(directory, "base.raw");
        log($"writing the {FormatSize(settings.SizeBytes)} base {basePath}");
        WriteBase(basePath, settings.SizeBytes, log);

        string aio = QemuImg.ChooseAio(qemuImg, basePath);
        string qemuVersion = QemuImg.Version(qemuImg);
        long clusters = settings.SizeBytes / ClusterSize;
        double calibratedIops = Calibrate(basePath, clusters, settings.QueueDepth);
        long requests = Math.Clamp((long)(calibratedIops * settings.TargetRunTime.TotalSeconds), Math.Min(MinimumRequests, clusters), clusters);
        log(Invariant($"{requests} requests per run (raw 4 KiB reads: {calibratedIops:N0} IOPS; target {settings.TargetRunTime.TotalSeconds:0.#} s per raw run); qemu-img bench -i {aio}"));

        // Rounds interleave the configurations, so that a slow spell of the storage hits all of them
        // alike; each cell of the report is the round with the median rate.
        Configuration[] chosen = Configurations.Where(c => settings.Includes(c.Name)).ToArray();
        List<List<Measurement>>[] rounds = chosen.Select(_ => new List<List<Measurement>>()).ToArray();
        for (int round = 1; round <= settings.Rounds; round++)
        {
            if (settings.Rounds > 1)
            {
                log(Invariant($"round {round} of {settings.Rounds}"));
            }
            for (int c = 0; c < chosen.Length; c++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                rounds[c].Add(chosen[c].Engine == Engine.Qemu
                    ? RunQemu(chosen[c], qemuImg, aio, directory, basePath, settings, requests, log, cancellationToken)
                    : RunXenDisk(chosen[c], directory, basePath, settings, requests, log, cancellationToken));
            }
        }
        List<(Configuration Configuration, List<Measurement> Runs)> results = chosen.Select((c, i) => (c, Median(rounds[i]))).ToList();
        return BuildReport(settings, requests, directory, fileSystem, qemuVersion,
            $"qemu-img bench -t none -i {aio} -d {settings.QueueDepth} -c {requests} -S {ClusterSize}", results);
    }

    /// <summary>Per phase, the round with the median rate; a failed round is reported rather than hidden.</summary>
    private static List<Measurement> Median(List<List<Measurement>> rounds) =>
        rounds[0].Select((first, phase) =>
        {
            List<Measurement> all = rounds.Select(r => r[phase]).ToList();
            return all.FirstOrDefault(m => m.Failure != null || m.Errors > 0) ?? all.OrderBy(m => m.Iops).ElementAt(all.Count / 2);
        }).ToList();

    /// <summary>One phase's outcome before ratios are known.</summary>
    internal sealed record Measurement(Phase Phase, long Requests, double Seconds, long Errors, string? Failure)
    {
        public double Iops => Seconds > 0 && Failure == null ? Requests / Seconds : 0;
    }

    private static CowBenchReport BuildReport(CowBenchSettings settings, long requests, string directory, string fileSystem, string qemuVersion, string qemuCommand,
        List<(Configuration Configuration, List<Measurement> Runs)> results)
    {
        double Best(Phase phase) => results
            .Where(r => r.Configuration.Engine == Engine.Qemu && r.Configuration.Layout == Layout.Qcow2)
            .Select(r => r.Runs.First(m => m.Phase == phase).Iops).DefaultIfEmpty(0).Max();
        double Raw(Engine engine, Phase phase) => results
            .Where(r => r.Configuration.Engine == engine && r.Configuration.Layout == Layout.Raw)
            .Select(r => r.Runs.First(m => m.Phase == phase).Iops).DefaultIfEmpty(0).Max();
        static double? Ratio(double value, double reference) => reference > 0 && value > 0 ? Math.Round(value / reference, 3) : null;

        List<CowBenchConfiguration> configurations = [];
        foreach ((Configuration configuration, List<Measurement> runs) in results)
        {
            configurations.Add(new CowBenchConfiguration(
                configuration.Name,
                configuration.Engine == Engine.Qemu ? "qemu" : "xendisk",
                configuration.Layout.ToString().ToLowerInvariant(),
                configuration.Policy?.ToString().ToLowerInvariant(),
                configuration.Options,
                runs.Select(m => new CowBenchRun(
                    PhaseName(m.Phase), m.Requests, Math.Round(m.Seconds, 4), Math.Round(m.Iops, 1), m.Errors, m.Failure,
                    configuration.Layout == Layout.Raw ? null : Ratio(m.Iops, Best(m.Phase)),
                    configuration.Layout == Layout.Raw ? null : Ratio(m.Iops, Raw(configuration.Engine, m.Phase)))).ToList()));
        }
        return new CowBenchReport(settings.SizeBytes, requests, settings.QueueDepth, ClusterSize, directory, fileSystem, qemuVersion, qemuCommand, settings.Rounds,
            Phases.Select(PhaseName).ToList(), configurations);
    }

    /// <summary>The table for docs/BENCHMARKS.md: IOPS per configuration and phase, then XenDisk's ratios.</summary>
    public static void WriteText(TextWriter output, CowBenchReport report)
    {
        output.WriteLine(Invariant($"copy-on-write bench: {FormatSize(report.SizeBytes)} base fully written; {report.Requests:N0} requests per run at queue depth {report.QueueDepth}; one request per {report.ClusterSize / 1024} KiB cluster; O_DIRECT{(report.Rounds > 1 ? $"; median of {report.Rounds} rounds" : "")}"));
        output.WriteLine($"storage: {report.FileSystem} ({Path.GetDirectoryName(report.Directory)}); QEMU: {report.QemuVersion}, {report.QemuCommand}");
        output.WriteLine();
        const int nameWidth = 40;
        const int columnWidth = 16;
        string header = "IOPS".PadRight(nameWidth) + string.Concat(report.Phases.Select(p => p.PadLeft(columnWidth)));
        output.WriteLine(header);
        foreach (CowBenchConfiguration configuration in report.Configurations)
        {
            output.WriteLine(configuration.Name.PadRight(nameWidth) + string.Concat(configuration.Runs.Select(r =>
                (r.Failure != null ? "failed" : r.Errors > 0 ? Invariant($"{r.Iops:N0}*") : Invariant($"{r.Iops:N0}")).PadLeft(columnWidth))));
        }
        output.WriteLine();
        output.WriteLine("ratio to QEMU's best qcow2 configuration / to raw through the same engine's I/O path".PadRight(nameWidth));
        output.WriteLine(new string(' ', nameWidth) + string.Concat(report.Phases.Select(p => p.PadLeft(columnWidth))));
        foreach (CowBenchConfiguration configuration in report.Configurations.Where(c => c.Format != "raw"))
        {
            output.WriteLine(configuration.Name.PadRight(nameWidth) + string.Concat(configuration.Runs.Select(r =>
                Invariant($"{Show(r.VsQemuBest)} / {Show(r.VsRaw)}").PadLeft(columnWidth))));
        }
        List<string> failures = report.Configurations.SelectMany(c => c.Runs.Where(r => r.Failure != null || r.Errors > 0)
            .Select(r => $"{c.Name} {r.Phase}: {r.Failure ?? Invariant($"{r.Errors} requests failed")}")).ToList();
        if (failures.Count > 0)
        {
            output.WriteLine();
            output.WriteLine("failures (* = some requests failed):");
            foreach (string failure in failures)
            {
                output.WriteLine("  " + failure);
            }
        }

        static string Show(double? ratio) => ratio is double r ? r.ToString("0.00", CultureInfo.InvariantCulture) : "-";
    }

    private static string FormatSize(long bytes) => bytes % (1L << 30) == 0
        ? Invariant($"{bytes >> 30} GiB")
        : Invariant($"{bytes / (double)(1 << 20):0.#} MiB");

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);

    /// <summary>Times a callback, for the runs.</summary>
    private static double Seconds(Action action)
    {
        long start = Stopwatch.GetTimestamp();
        action();
        return Stopwatch.GetElapsedTime(start).TotalSeconds;
    }
}

/// <summary>The benchmark cannot run here (a missing tool, memory-backed storage); the message says why.</summary>
internal sealed class CowBenchException(string message, Exception? inner = null) : Exception(message, inner);
