using System.CommandLine;
using XenDisk.Cli.Bench;
using XenDisk.Cli.Commands.Image;

namespace XenDisk.Cli.Commands;

/// <summary>`xendisk bench cow`: XenDisk's copy-on-write engine against QEMU's qcow2 driver and raw storage (see <see cref="CowBenchmark"/>).</summary>
internal static class BenchCowCommand
{
    /// <summary>Below this the runs are too short to say anything (and qemu-img's startup dominates).</summary>
    private const long MinimumSize = 4L << 20;

    internal static Command CreateCow()
    {
        var size = new Option<string>("--size") { Description = "Size of the base (fully written first) and of each overlay, e.g. 2G or 64M", DefaultValueFactory = _ => "2G" };
        var seconds = new Option<double>("--seconds") { Description = "Target length of a raw run; sets the requests per run (capped at one per 64 KiB cluster of the base)", DefaultValueFactory = _ => 5 };
        var directory = new Option<string?>("--dir") { Description = "Put the working files in a temporary directory under this one (default /var/tmp); must not be tmpfs" };
        var depth = new Option<int>("--queue-depth") { Description = "Requests in flight (qemu-img bench -d; XenDisk: worker threads)", DefaultValueFactory = _ => CowBenchmark.DefaultQueueDepth };
        var json = new Option<bool>("--json") { Description = "Print the result as JSON" };
        var rounds = new Option<int>("--rounds") { Description = "Run every configuration this many times, interleaved, and report the median of each cell (the storage's rate drifts)", DefaultValueFactory = _ => 1 };
        var only = new Option<string[]>("--only") { Description = "Run only the configurations whose name contains this text (repeatable), e.g. --only bitmap --only \"extended_l2 lazy\" --only raw; ratios need the QEMU and raw configurations they compare with" };
        var command = new Command("cow", "Copy-on-write cost: XenDisk's qcow2 (each metadata policy) and bitmap overlays vs qemu-img bench (QEMU qcow2) vs raw, on the same storage")
        {
            size, seconds, directory, depth, json, only, rounds,
        };
        command.SetAction((parse, cancellationToken) => CommandRunner.RunAsync(parse, cancellationToken, () =>
        {
            if (!SizeText.TryParse(parse.GetValue(size), out long bytes, out string sizeError))
            {
                return CommandErrors.Invalid(parse, $"--size: {sizeError}");
            }
            if (bytes < MinimumSize || bytes % CowBenchmark.ClusterSize != 0)
            {
                return CommandErrors.Invalid(parse, "--size must be at least 4M and a multiple of 64k");
            }
            if (parse.GetValue(seconds) is <= 0 or > 3600)
            {
                return CommandErrors.Invalid(parse, "--seconds must be between 0 and 3600");
            }
            if (parse.GetValue(rounds) is < 1 or > 25)
            {
                return CommandErrors.Invalid(parse, "--rounds must be 1 to 25");
            }
            if (parse.GetValue(depth) is < 1 or > 1024)
            {
                return CommandErrors.Invalid(parse, "--queue-depth must be 1 to 1024");
            }
            if (ConfigurationFilter.Unmatched(parse.GetValue(only), CowBenchmark.ConfigurationNames) is { } unmatched)
            {
                return CommandErrors.Invalid(parse, unmatched);
            }
            string? parent = parse.GetValue(directory);
            if (parent != null && !Directory.Exists(parent))
            {
                return CommandErrors.Invalid(parse, $"--dir {parent} does not exist");
            }
            TextWriter error = parse.Error();
            CowBenchReport report;
            try
            {
                report = CowBenchmark.Run(
                    new CowBenchSettings(bytes, TimeSpan.FromSeconds(parse.GetValue(seconds)), parent, parse.GetValue(depth), parse.GetValue(only), parse.GetValue(rounds)),
                    line =>
                    {
                        error.WriteLine("bench cow: " + line);
                        error.Flush();
                    },
                    cancellationToken);
            }
            catch (CowBenchException e)
            {
                return CommandErrors.Failed(parse, e.Message);
            }
            if (parse.GetValue(json))
            {
                parse.WriteJson(report, ImageJsonContext.Default.CowBenchReport);
            }
            else
            {
                CowBenchmark.WriteText(parse.Out(), report);
            }
            return report.Errors == 0 ? 0 : CommandErrors.FailureExitCode;
        }));
        return command;
    }
}
