using System.CommandLine;
using System.Globalization;
using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Qcow2;
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
            if (!ImageFiles.TryResolveFormat(parse, path, parse.GetValue(format), out ImageFormat kind, out int exitCode))
            {
                return exitCode;
            }
            string? mode = parse.GetValue(repairMode) ?? (parse.GetValue(repair) ? AllMode : null);
            bool fix = mode != null;
            CheckResult result;
            try
            {
                switch (kind)
                {
                    case ImageFormat.Qcow2:
                        result = mode == LeaksMode ? CheckQcow2LeaksOnly(parse, path) : CheckQcow2(parse, path, fix);
                        break;
                    case ImageFormat.Bitmap:
                        // A bitmap overlay has no reference counts, so it cannot leak: -r leaks has nothing to repair.
                        result = CheckBitmap(path, mode == AllMode);
                        break;
                    default:
                        return CommandErrors.Failed(parse, $"'{path}' is a raw image, which has no metadata to check", NotSupported);
                }
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

    private static CheckResult CheckQcow2(ParseResult parse, string path, bool repair)
    {
        using FileImageDevice device = FileImageDevice.Open(Path.GetFullPath(path), readOnly: !repair);
        // A header that cannot be read is "could not check", not a corruption count.
        Qcow2Disk.ReadHeader(device);
        using ProgressBar progress = new(parse.Error(), "checking");
        Qcow2CheckReport report = Qcow2Checker.Check(device, repair, progress.Callback);
        progress.Complete();
        return new CheckResult
        {
            Filename = path,
            Format = "qcow2",
            Corruptions = report.Corruptions,
            Leaks = report.Leaks,
            CorruptionsFixed = report.CorruptionsFixed,
            LeaksFixed = report.LeaksFixed,
            ImageEndOffset = report.ImageEndOffset,
            Messages = report.Messages,
            Repaired = repair && (report.CorruptionsFixed > 0 || report.LeaksFixed > 0),
        };
    }

    /// <summary>
    /// -r leaks: repairs only leaked clusters, as qemu-img does. The engine repairs by rebuilding the
    /// refcounts from the references, which fixes refcount corruptions too, so it repairs only an image
    /// whose sole findings are leaks; one with corruptions is reported untouched, pointing at -r all.
    /// </summary>
    private static CheckResult CheckQcow2LeaksOnly(ParseResult parse, string path)
    {
        CheckResult found = CheckQcow2(parse, path, repair: false);
        if (found.Leaks == 0)
        {
            return found;
        }
        if (found.Corruptions > 0)
        {
            return found with { Messages = [.. found.Messages, "Not repaired: -r leaks leaves an image with corruptions alone; repair it with -r all"] };
        }
        return CheckQcow2(parse, path, repair: true);
    }

    private static CheckResult CheckBitmap(string path, bool repair)
    {
        using FileImageDevice device = FileImageDevice.Open(Path.GetFullPath(path), readOnly: !repair);
        BitmapCheckReport report = BitmapChecker.Check(device, repair);
        if (report.Header == null)
        {
            throw new StorageException(string.Join("; ", report.Problems));
        }
        int remaining = report.Repaired ? 0 : report.Problems.Count;
        return new CheckResult
        {
            Filename = path,
            Format = "bitmap",
            Corruptions = remaining,
            CorruptionsFixed = report.Repaired ? report.Problems.Count : 0,
            Messages = report.Problems,
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
