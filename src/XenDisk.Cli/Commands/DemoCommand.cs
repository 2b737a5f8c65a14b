using System.CommandLine;
using XenDisk.Cli.Demo;

namespace XenDisk.Cli.Commands;

/// <summary>`xendisk demo`: the main job on an embedded default (see <see cref="DemoScenario"/>).</summary>
internal static class DemoCommand
{
    public static Command Create()
    {
        var seconds = new Option<double>("--seconds") { Description = "How long each guest's workload runs", DefaultValueFactory = _ => 5 };
        var sizeMiB = new Option<int>("--size-mib") { Description = "Size of each guest's temporary disk image, MiB", DefaultValueFactory = _ => 256 };
        var seed = new Option<int>("--seed") { Description = "Seed of the workload's random choices", DefaultValueFactory = _ => 1 };
        var directory = new Option<string?>("--dir") { Description = "Put the images here (kept) instead of a temporary directory (removed)" };
        var json = new Option<bool>("--json") { Description = "Print the report as JSON" };
        var verbose = new Option<bool>("--verbose", "-v") { Description = "Log device lifecycle events to stderr" };
        var command = new Command("demo", "Run the backend on the simulated hypervisor with two test guests and a verified mixed workload")
        {
            seconds, sizeMiB, seed, directory, json, verbose,
        };
        command.SetAction(async (parse, cancellationToken) =>
        {
            if (parse.GetValue(seconds) is <= 0 or > 3600)
            {
                return CommandErrors.Invalid("--seconds must be between 0 and 3600");
            }

            if (parse.GetValue(sizeMiB) is < 16 or > 65536)
            {
                return CommandErrors.Invalid("--size-mib must be between 16 and 65536");
            }

            using var loggerFactory = CommandLogging.Create(parse.GetValue(verbose));
            var settings = new DemoSettings(
                TimeSpan.FromSeconds(parse.GetValue(seconds)), (long)parse.GetValue(sizeMiB) << 20, parse.GetValue(seed), parse.GetValue(directory));
            var report = await DemoScenario.RunAsync(settings, loggerFactory, cancellationToken).ConfigureAwait(false);
            if (parse.GetValue(json))
            {
                DemoOutput.WriteJson(Console.Out, report);
            }
            else
            {
                DemoOutput.WriteText(Console.Out, report);
            }

            return report.Passed ? 0 : 1;
        });
        return command;
    }
}
