using System.CommandLine;
using System.Globalization;
using XenDisk.Cow.Overlays;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// `xendisk image check [-r leaks|all] [--repair] [--json] IMAGE`, with qemu-img check's exit codes so that
/// scripts carry over: 0 clean, 1 the check could not be done, 2 corruptions, 3 leaks only,
/// 63 a format without metadata to check (raw).
/// </summary>
internal static class ImageCheckCommand
{
    public const int Clean = 0;
    public const int CouldNotCheck = 1;
    public const int Corrupted = 2;
    public const int LeaksOnly = 3;
    public const int NotSupported = 63;

    private const string LeaksMode = "leaks";
    private const string AllMode = "all";

    /// <summary>The outcome in one shape for both formats (qcow2 reports leaks; bitmap overlays cannot leak).</summary>
    internal sealed record CheckResult
    {
        public required string Filename { get; init; }
        public required string Format { get; init; }
        public int Corruptions { get; init; }
        public int Leaks { get; init; }
        public int CorruptionsFixed { get; init; }
        public int LeaksFixed { get; init; }
        public long? ImageEndOffset { get; init; }
        public IReadOnlyList<string> Messages { get; init; } = [];
        public bool Repaired { get; init; }
    }

    public static Command Create()
    {
        var format = ImageFiles.FormatOption();
        var repairMode = new Option<string?>("-r") { Description = "Repair, as qemu-img check -r: 'leaks' (leaked clusters only) or 'all' (leaks, refcounts, COPIED bits; bitmap: invalid grains, flags)" };
        repairMode.AcceptOnlyFromAmong(LeaksMode, AllMode);
        var repair = new Option<bool>("--repair") { Description = "Repair everything that can be repaired (-r all)" };
        var json = new Option<bool>("--json") { Description = "Print the result as JSON" };
        var image = new Argument<string>("IMAGE") { Description = "The image file (must not be in use)" };
        var command = new Command("check", "Check an image's metadata for corruption and leaks (exit 0 clean, 2 corruptions, 3 leaks only, 1 could not check)")
        {
            format, repairMode, repair, json, image,
        };
        command.SetAction((parse, cancellationToken) => CommandRunner.RunAsync(parse, cancellationToken, () =>
        {
            string path = parse.GetValue(image)!;
            if (!ImageFiles.TryResolveOverlay(parse, path, parse.GetValue(format), out OverlayFormat? overlay, out int exitCode))
            {
                return exitCode;
            }
            if (overlay is null)
            {
                return CommandErrors.Failed(parse, $"'{path}' is a raw image, which has no metadata to check", NotSupported);
            }
            string? mode = parse.GetValue(repairMode) ?? (parse.GetValue(repair) ? AllMode : null);
            OverlayRepair fix = mode switch
            {
                LeaksMode => OverlayRepair.Leaks,
                AllMode => OverlayRepair.All,
                _ => OverlayRepair.None,
            };
            CheckResult result;
            try
            {
                result = Check(parse, path, overlay, fix);
            }
            catch (StorageException e)
            {
                return CommandErrors.Failed(parse, $"cannot check '{path}': {e.Message}", CouldNotCheck);
            }
            if (parse.WantsJson())
            {
                parse.WriteJson(result, ImageJsonContext.Default.CheckResult);
            }
            else
            {
                WriteText(parse.Out(), result);
            }
            return result.Corruptions > 0 ? Corrupted : result.Leaks > 0 ? LeaksOnly : Clean;
        }));
        return command;
    }

    private static CheckResult Check(ParseResult parse, string path, OverlayFormat format, OverlayRepair repair)
    {
        using IBlockDevice device = ImageFiles.OpenImage(path, readOnly: repair == OverlayRepair.None);
        using ProgressBar progress = new(parse.Error(), "checking");
        OverlayCheckReport report = format.Check(device, repair, progress.Callback);
        progress.Complete();
        return new CheckResult
        {
            Filename = path,
            Format = format.Name,
            Corruptions = report.Corruptions,
            Leaks = report.Leaks,
            CorruptionsFixed = report.CorruptionsFixed,
            LeaksFixed = report.LeaksFixed,
            ImageEndOffset = report.ImageEndOffset,
            Messages = report.Messages,
            Repaired = report.Repaired,
        };
    }

    private static void WriteText(TextWriter output, CheckResult result)
    {
        foreach (string message in result.Messages)
        {
            output.WriteLine(message);
        }
        if (result.CorruptionsFixed > 0 || result.LeaksFixed > 0)
        {
            output.WriteLine("The following inconsistencies were found and repaired:");
            output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"    {result.LeaksFixed} leaked clusters"));
            output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"    {result.CorruptionsFixed} corruptions"));
            output.WriteLine();
        }
        if (result.Corruptions == 0 && result.Leaks == 0)
        {
            output.WriteLine("No errors were found on the image.");
        }
        if (result.Leaks > 0)
        {
            output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{result.Leaks} leaked clusters were found on the image."));
            output.WriteLine("This means waste of disk space, but no harm to data.");
        }
        if (result.Corruptions > 0)
        {
            output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{result.Corruptions} errors were found on the image."));
            output.WriteLine("Data may be corrupted, or further writes to the image may corrupt it.");
        }
        if (result.ImageEndOffset is long end)
        {
            output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"Image end offset: {end}"));
        }
    }
}
