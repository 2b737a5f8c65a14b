using static System.FormattableString;
using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using XenDisk.Cli.Bench;

namespace XenDisk.Cli.Commands;

/// <summary>`xendisk bench ...`: benchmarks that print figures for docs/BENCHMARKS.md.</summary>
internal static class BenchCommand
{
    public static Command Create() => new("bench", "Measure XenDisk") { CreateRing(), BenchCowCommand.CreateCow(), CreateStorage(), CreateIscsi(), CreateRestart() };

    private static Command CreateRestart()
    {
        var guests = new Option<int>("--guests") { Description = "Guests under load whose disks the new instance opens and reconnects", DefaultValueFactory = _ => 4 };
        var newDevices = new Option<int>("--new-devices") { Description = "Devices the toolstack adds as the new instance starts", DefaultValueFactory = _ => 4 };
        var rounds = new Option<int>("--rounds") { Description = "Restarts, each on a fresh simulated host", DefaultValueFactory = _ => 5 };
        var size = new Option<string>("--size") { Description = "Virtual size of the base image and of each qcow2 overlay", DefaultValueFactory = _ => "256M" };
        var directory = new Option<string?>("--dir") { Description = "Put the images in a temporary directory under this one (default /var/tmp)" };
        var openDelay = new Option<int>("--open-delay-ms") { Description = "Make each open of an old guest's overlay this much slower, as on a host where reading image metadata is slow", DefaultValueFactory = _ => 0 };
        var command = new Command("restart", "A restart under load: time from a new device's creation in xenstore to InitWait while the new instance reconnects the old guests")
        {
            guests, newDevices, rounds, size, directory, openDelay,
        };
        command.SetAction(async (parse, cancellationToken) =>
        {
            if (!Image.SizeText.TryParse(parse.GetValue(size), out long bytes, out string sizeError) || bytes < (1L << 20) || bytes % 4096 != 0)
            {
                return CommandErrors.Invalid($"--size must be at least 1M and a multiple of 4k ({sizeError})");
            }

            if (parse.GetValue(guests) is < 1 or > 64 || parse.GetValue(newDevices) is < 1 or > 64 || parse.GetValue(rounds) is < 1 or > 25
                || parse.GetValue(openDelay) is < 0 or > 60_000)
            {
                return CommandErrors.Invalid("--guests and --new-devices must be 1 to 64, --rounds 1 to 25 and --open-delay-ms 0 to 60000");
            }

            using var loggerFactory = CommandLogging.Create(verbose: false);
            var settings = new RestartBenchSettings(parse.GetValue(guests), parse.GetValue(newDevices), parse.GetValue(rounds), bytes, parse.GetValue(directory),
                TimeSpan.FromMilliseconds(parse.GetValue(openDelay)));
            TextWriter error = Console.Error;
            var report = await RestartBenchmark.RunAsync(settings, loggerFactory, line => error.WriteLine("bench restart: " + line), cancellationToken).ConfigureAwait(false);
            RestartBenchmark.WriteText(Console.Out, settings, report);
            return report.Sum(r => r.OldGuestErrors) == 0 ? 0 : 1;
        });
        return command;
    }

    private static Command CreateIscsi()
    {
        var url = new Argument<string>("URL") { Description = "The LUN both sides use, iscsi://HOST[:PORT]/IQN/LUN; its contents are overwritten" };
        var overwrite = new Option<bool>("--overwrite") { Description = "Confirm that the LUN's contents may be overwritten (the write configurations write all over it)" };
        var seconds = new Option<double>("--seconds") { Description = "Measured length of each XenDisk run (qemu-img bench issues as many requests)", DefaultValueFactory = _ => 5 };
        var rounds = new Option<int>("--rounds") { Description = "Interleaved rounds (XenDisk, qemu-img, XenDisk, ...); the median round is reported", DefaultValueFactory = _ => 3 };
        var ioThreads = IoThreadsOption();
        var only = new Option<string[]>("--only") { Description = "Run only the configurations whose name contains this text (repeatable)" };
        var json = new Option<bool>("--json") { Description = "Print the result as JSON" };
        var command = new Command("iscsi", "The whole data path over an iSCSI LUN against qemu-img bench through QEMU's libiscsi driver on the same LUN: IOPS, CPU, system calls and context switches per request")
        {
            url, overwrite, seconds, rounds, ioThreads, only, json,
        };
        command.SetAction((parse, cancellationToken) =>
        {
            if (!parse.GetValue(overwrite))
            {
                return Task.FromResult(CommandErrors.Invalid(parse, "bench iscsi writes all over the LUN: give --overwrite to confirm"));
            }

            if (parse.GetValue(seconds) is <= 0 or > 3600 || parse.GetValue(rounds) is < 1 or > 25 || !IoThreadsValid(parse.GetValue(ioThreads)))
            {
                return Task.FromResult(CommandErrors.Invalid(parse, $"--seconds must be between 0 and 3600, --rounds 1 to 25 and --io-threads 1 to {XenDisk.Backend.DataPlane.DataPlaneOptions.MaxIoThreadsPerRing}"));
            }

            if (ConfigurationFilter.Unmatched(parse.GetValue(only), IscsiBenchmark.ConfigurationNames) is { } unmatched)
            {
                return Task.FromResult(CommandErrors.Invalid(parse, unmatched));
            }

            using var loggerFactory = CommandLogging.Create(verbose: false);
            TextWriter error = Console.Error;
            var report = IscsiBenchmark.Run(
                new IscsiBenchSettings(parse.GetValue(url)!, TimeSpan.FromSeconds(parse.GetValue(seconds)), parse.GetValue(rounds), parse.GetValue(ioThreads), parse.GetValue(only)),
                loggerFactory, line => error.WriteLine("bench iscsi: " + line), cancellationToken);
            return Print(parse.GetValue(json), report, IscsiBenchJsonContext.Default.IscsiBenchReport, IscsiBenchmark.WriteText);
        });
        return command;
    }

    private static Command CreateStorage()
    {
        var size = new Option<string>("--size") { Description = "Size of the file both sides use (fully written first), e.g. 1G", DefaultValueFactory = _ => "1G" };
        var seconds = new Option<double>("--seconds") { Description = "Measured length of each run", DefaultValueFactory = _ => 5 };
        var rounds = new Option<int>("--rounds") { Description = "Interleaved rounds (XenDisk, fio, XenDisk, fio, ...); the median round is reported", DefaultValueFactory = _ => 3 };
        var engine = new Option<XenDisk.Backend.DataPlane.IoEngine>("--engine") { Description = "XenDisk's I/O engine: Auto, IoUring or Threads", DefaultValueFactory = _ => XenDisk.Backend.DataPlane.IoEngine.Auto };
        var directory = new Option<string?>("--dir") { Description = "Put the file in a temporary directory under this one (default /var/tmp); must not be tmpfs" };
        var only = new Option<string[]>("--only") { Description = "Run only the configurations whose name contains this text (repeatable)" };
        var json = new Option<bool>("--json") { Description = "Print the result as JSON" };
        var ioThreads = IoThreadsOption();
        var dataPath = new Option<XenDisk.Backend.DataPlane.DataPath>("--data-path") { Description = "XenDisk's data path (Backend:DataPath): GrantMap (persistent grants offered) or GrantCopy (bounce buffers, no persistent grants)", DefaultValueFactory = _ => XenDisk.Backend.DataPlane.DataPath.GrantMap };
        var submissionBatch = new Option<int>("--submission-batch")
        {
            Description = "XenDisk's data operations per io_uring_enter while a busy ring is still being read (the data plane's SubmissionBatch)",
            DefaultValueFactory = _ => new XenDisk.Backend.DataPlane.DataPlaneOptions().SubmissionBatch,
        };
        var command = new Command("storage", "The whole data path over a real file against fio (io_uring) on the same file: IOPS, CPU, system calls and context switches per request")
        {
            size, seconds, rounds, engine, ioThreads, dataPath, submissionBatch, directory, only, json,
        };
        command.SetAction((parse, cancellationToken) =>
        {
            if (!Image.SizeText.TryParse(parse.GetValue(size), out long bytes, out string sizeError) || bytes < (64L << 20) || bytes % 4096 != 0)
            {
                return Task.FromResult(CommandErrors.Invalid(parse, $"--size must be at least 64M and a multiple of 4k ({sizeError})"));
            }

            if (parse.GetValue(seconds) is <= 0 or > 3600 || parse.GetValue(rounds) is < 1 or > 25 || !IoThreadsValid(parse.GetValue(ioThreads)))
            {
                return Task.FromResult(CommandErrors.Invalid(parse, $"--seconds must be between 0 and 3600, --rounds 1 to 25 and --io-threads 1 to {XenDisk.Backend.DataPlane.DataPlaneOptions.MaxIoThreadsPerRing}"));
            }

            if (parse.GetValue(submissionBatch) is < 1 or > XenDisk.Backend.DataPlane.DataPlaneOptions.MaxSubmissionBatch)
            {
                return Task.FromResult(CommandErrors.Invalid(parse, $"--submission-batch must be between 1 and {XenDisk.Backend.DataPlane.DataPlaneOptions.MaxSubmissionBatch}"));
            }

            if (ConfigurationFilter.Unmatched(parse.GetValue(only), StorageBenchmark.ConfigurationNames) is { } unmatched)
            {
                return Task.FromResult(CommandErrors.Invalid(parse, unmatched));
            }

            using var loggerFactory = CommandLogging.Create(verbose: false);
            TextWriter error = Console.Error;
            var report = StorageBenchmark.Run(
                new StorageBenchSettings(bytes, TimeSpan.FromSeconds(parse.GetValue(seconds)), parse.GetValue(directory), parse.GetValue(rounds), parse.GetValue(engine), parse.GetValue(only), parse.GetValue(ioThreads), parse.GetValue(dataPath), parse.GetValue(submissionBatch)),
                loggerFactory, line => error.WriteLine("bench storage: " + line), cancellationToken);
            return Print(parse.GetValue(json), report, StorageBenchJsonContext.Default.StorageBenchReport, StorageBenchmark.WriteText);
        });
        return command;
    }

    /// <summary>--io-threads, as the storage and iSCSI benchmarks take it: Backend:IoThreadsPerRing.</summary>
    private static Option<int> IoThreadsOption() => new("--io-threads")
    {
        Description = "XenDisk's I/O threads per ring (the service's default unless given)",
        DefaultValueFactory = _ => new XenDisk.Backend.DataPlane.DataPlaneOptions().IoThreadsPerRing,
    };

    private static bool IoThreadsValid(int threads) => threads is >= 1 and <= XenDisk.Backend.DataPlane.DataPlaneOptions.MaxIoThreadsPerRing;

    private static Command CreateRing()
    {
        var seconds = new Option<double>("--seconds") { Description = "Measured run length", DefaultValueFactory = _ => 5 };
        var warmup = new Option<double>("--warmup") { Description = "Unmeasured warm-up before the run", DefaultValueFactory = _ => 2 };
        var order = new Option<int>("--ring-order") { Description = "Ring page order (0-4): 2^order ring pages", DefaultValueFactory = _ => 0 };
        var readPercent = new Option<int>("--read-percent") { Description = "Share of reads; the rest are writes", DefaultValueFactory = _ => 100 };
        var disk = new Option<BenchDisk>("--disk") { Description = "null (no data touched) or memory (a memcpy per request)", DefaultValueFactory = _ => BenchDisk.Null };
        var noPersistent = new Option<bool>("--no-persistent") { Description = "Map and unmap every request's pages instead of persistent grants" };
        var telemetry = new Option<bool>("--telemetry") { Description = "Record the request-duration and batch-size histograms into an OpenTelemetry meter provider, as the service does" };
        var inflight = new Option<bool>("--inflight-record") { Description = "Keep each ring's in-flight record (on tmpfs under /dev/shm, as the service keeps it under /run)" };
        var json = new Option<bool>("--json") { Description = "Print the result as JSON" };
        var command = new Command("ring", "The data plane alone: 4 KiB requests at full ring depth, one queue, storage that completes at once")
        {
            seconds, warmup, order, readPercent, disk, noPersistent, telemetry, inflight, json,
        };
        command.SetAction(async (parse, cancellationToken) =>
        {
            if (parse.GetValue(order) is < 0 or > 4)
            {
                return CommandErrors.Invalid("--ring-order must be 0 to 4");
            }

            if (parse.GetValue(readPercent) is < 0 or > 100)
            {
                return CommandErrors.Invalid("--read-percent must be 0 to 100");
            }

            if (parse.GetValue(seconds) <= 0 || parse.GetValue(warmup) < 0)
            {
                return CommandErrors.Invalid("--seconds must be positive and --warmup not negative");
            }

            using var loggerFactory = CommandLogging.Create(verbose: false);
            var settings = new RingBenchSettings(
                TimeSpan.FromSeconds(parse.GetValue(seconds)), TimeSpan.FromSeconds(parse.GetValue(warmup)), parse.GetValue(order),
                parse.GetValue(readPercent), parse.GetValue(disk), !parse.GetValue(noPersistent), parse.GetValue(telemetry), parse.GetValue(inflight));
            var r = await RingBenchmark.RunAsync(settings, loggerFactory, cancellationToken).ConfigureAwait(false);
            if (parse.GetValue(json))
            {
                Console.WriteLine(JsonSerializer.Serialize(r, CliJsonContext.Default.RingBenchResult));
            }
            else
            {
                Console.WriteLine(Invariant($"ring bench: {r.Mix}, {r.Disk} disk, ring order {r.RingPageOrder} ({r.RingEntries} slots, depth {r.Depth}), persistent grants {(r.PersistentGrants ? "on" : "off")}, telemetry {(r.Telemetry ? "on" : "off")}, in-flight record {(r.InflightRecord ? "on" : "off")}"));
                Console.WriteLine(Invariant($"  {r.RequestsPerSecond:N0} requests/s over {r.Seconds:F1} s ({r.Requests:N0} requests, {r.Errors} errors)"));
                Console.WriteLine(Invariant($"  backend ring thread: {r.BackendCpuNanosecondsPerRequest:F0} ns CPU per request ({r.BackendCpuUtilisation:P0} of one core)"));
                Console.WriteLine(Invariant($"  whole process (backend + test frontend): {r.ProcessCpuNanosecondsPerRequest:F0} ns CPU per request"));
                Console.WriteLine(Invariant($"  allocated: {r.AllocatedBytesPerRequest:F3} bytes per request (whole process, steady state)"));
                Console.WriteLine(Invariant($"  latency p50 {r.P50Microseconds:F1} us, p99 {r.P99Microseconds:F1} us; {r.AverageBatch:F1} requests per batch; notifications {r.NotificationsSent:N0} sent, {r.NotificationsSuppressed:N0} suppressed"));
                if (r.HistogramRequests is { } recorded)
                {
                    Console.WriteLine(Invariant($"  telemetry: {recorded:N0} requests in the request-duration histogram (warm-up included); one recording costs {r.HistogramRecordNanoseconds:F0} ns of CPU"));
                }
            }

            return r.Errors == 0 ? 0 : 1;
        });
        return command;
    }

    /// <summary>A benchmark's report on stdout: JSON with --json, otherwise its table.</summary>
    private static Task<int> Print<T>(bool json, T report, JsonTypeInfo<T> type, Action<TextWriter, T> writeText)
    {
        if (json)
        {
            Console.WriteLine(JsonSerializer.Serialize(report, type));
        }
        else
        {
            writeText(Console.Out, report);
        }

        return Task.FromResult(0);
    }
}
