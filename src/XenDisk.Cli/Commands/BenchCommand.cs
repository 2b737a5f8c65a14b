using static System.FormattableString;
using System.CommandLine;
using System.Text.Json;
using XenDisk.Cli.Bench;

namespace XenDisk.Cli.Commands;

/// <summary>`xendisk bench ...`: benchmarks that print figures for docs/BENCHMARKS.md.</summary>
internal static class BenchCommand
{
    public static Command Create() => new("bench", "Measure XenDisk") { CreateRing(), BenchCowCommand.CreateCow() };

    private static Command CreateRing()
    {
        var seconds = new Option<double>("--seconds") { Description = "Measured run length", DefaultValueFactory = _ => 5 };
        var warmup = new Option<double>("--warmup") { Description = "Unmeasured warm-up before the run", DefaultValueFactory = _ => 2 };
        var order = new Option<int>("--ring-order") { Description = "Ring page order (0-4): 2^order ring pages", DefaultValueFactory = _ => 0 };
        var readPercent = new Option<int>("--read-percent") { Description = "Share of reads; the rest are writes", DefaultValueFactory = _ => 100 };
        var disk = new Option<BenchDisk>("--disk") { Description = "null (no data touched) or memory (a memcpy per request)", DefaultValueFactory = _ => BenchDisk.Null };
        var noPersistent = new Option<bool>("--no-persistent") { Description = "Map and unmap every request's pages instead of persistent grants" };
        var json = new Option<bool>("--json") { Description = "Print the result as JSON" };
        var command = new Command("ring", "The data plane alone: 4 KiB requests at full ring depth, one queue, storage that completes at once")
        {
            seconds, warmup, order, readPercent, disk, noPersistent, json,
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
                parse.GetValue(readPercent), parse.GetValue(disk), !parse.GetValue(noPersistent));
            var r = await RingBenchmark.RunAsync(settings, loggerFactory, cancellationToken).ConfigureAwait(false);
            if (parse.GetValue(json))
            {
                Console.WriteLine(JsonSerializer.Serialize(r, CliJsonContext.Default.RingBenchResult));
            }
            else
            {
                Console.WriteLine(Invariant($"ring bench: {r.Mix}, {r.Disk} disk, ring order {r.RingPageOrder} ({r.RingEntries} slots, depth {r.Depth}), persistent grants {(r.PersistentGrants ? "on" : "off")}"));
                Console.WriteLine(Invariant($"  {r.RequestsPerSecond:N0} requests/s over {r.Seconds:F1} s ({r.Requests:N0} requests, {r.Errors} errors)"));
                Console.WriteLine(Invariant($"  backend ring thread: {r.BackendCpuNanosecondsPerRequest:F0} ns CPU per request ({r.BackendCpuUtilisation:P0} of one core)"));
                Console.WriteLine(Invariant($"  whole process (backend + test frontend): {r.ProcessCpuNanosecondsPerRequest:F0} ns CPU per request"));
                Console.WriteLine(Invariant($"  allocated: {r.AllocatedBytesPerRequest:F3} bytes per request (whole process, steady state)"));
                Console.WriteLine(Invariant($"  latency p50 {r.P50Microseconds:F1} us, p99 {r.P99Microseconds:F1} us; {r.AverageBatch:F1} requests per batch; notifications {r.NotificationsSent:N0} sent, {r.NotificationsSuppressed:N0} suppressed"));
            }

            return r.Errors == 0 ? 0 : 1;
        });
        return command;
    }
}
