using System.CommandLine;
using System.CommandLine.Parsing;
using XenDisk.Cow.Overlays;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// `xendisk image bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)...
/// [-b SOURCE_FILE] [-g GRANULARITY] [-f FMT] IMAGE BITMAP`, as qemu-img bitmap: the operations run in
/// the order given on one qcow2 image's persistent dirty bitmap, and are stored when the image closes.
/// The bitmaps are QEMU's (docs/interop/qcow2.txt == Bitmaps ==), so each tool reads what the other wrote.
/// </summary>
internal static class ImageBitmapCommand
{
    private static readonly string[] Operations = ["--merge", "--add", "--remove", "--clear", "--enable", "--disable"];

    public static Command Create()
    {
        var merge = new Option<string[]>("--merge") { Description = "Mark dirty what bitmap SOURCE marks dirty (of IMAGE, or of -b SOURCE_FILE)" };
        var add = new Option<bool>("--add") { Description = "Add an empty bitmap (enabled: it tracks writes)" };
        var remove = new Option<bool>("--remove") { Description = "Remove the bitmap" };
        var clear = new Option<bool>("--clear") { Description = "Clear every bit" };
        var enable = new Option<bool>("--enable") { Description = "Track writes in the bitmap" };
        var disable = new Option<bool>("--disable") { Description = "Stop tracking writes in the bitmap" };
        var sourceFile = new Option<string?>("-b") { Description = "The image --merge reads its SOURCE bitmap from" };
        var sourceFormat = new Option<string?>("-F") { Description = "The format of -b's image (qcow2)" };
        var granularity = new Option<string?>("-g") { Description = "Granularity of an added bitmap (a power of two from 512; default: the cluster size, at least 4 KiB)" };
        var format = ImageFiles.FormatOption();
        var image = new Argument<string>("IMAGE") { Description = "The qcow2 image (no one may have it open)" };
        var name = new Argument<string>("BITMAP") { Description = "The bitmap's name" };
        var command = new Command("bitmap", "Add, remove, clear, enable, disable or merge persistent dirty bitmaps of a qcow2 image")
        {
            merge, add, remove, clear, enable, disable, sourceFile, sourceFormat, granularity, format, image, name,
        };
        command.SetAction((parse, cancellationToken) => CommandRunner.RunAsync(parse, cancellationToken, () =>
        {
            string path = parse.GetValue(image)!;
            string bitmap = parse.GetValue(name)!;
            List<(string Operation, string? Source)> steps = StepsInOrder(parse.Tokens);
            if (steps.Count == 0)
            {
                return CommandErrors.Invalid(parse, "need at least one of --merge, --add, --remove, --clear, --enable, --disable");
            }
            long size = 0;
            if (parse.GetValue(granularity) is { } text)
            {
                if (!steps.Any(s => s.Operation == "--add"))
                {
                    return CommandErrors.Invalid(parse, "-g is only valid with --add");
                }
                if (!SizeText.TryParse(text, out size, out string error))
                {
                    return CommandErrors.Invalid(parse, $"invalid granularity '{text}': {error}");
                }
            }
            string? otherFile = parse.GetValue(sourceFile);
            if (otherFile != null && !steps.Any(s => s.Operation == "--merge"))
            {
                return CommandErrors.Invalid(parse, "-b is only valid with --merge");
            }
            if (parse.GetValue(sourceFormat) is { } otherFormat && !HoldsBitmaps(OverlayFormat.Find(otherFormat)))
            {
                return CommandErrors.Invalid(parse, $"-F {otherFormat}: only qcow2 images hold persistent bitmaps");
            }
            if (!ImageFiles.TryResolveFormat(parse, path, parse.GetValue(format), out ImageFormat kind, out int exitCode))
            {
                return exitCode;
            }
            if (ImageFormats.Overlay(kind) is not { } overlay)
            {
                return CommandErrors.Failed(parse, $"'{path}' is not a qcow2 image; only qcow2 images hold persistent bitmaps");
            }
            OverlayOperationResult result = overlay.EditBitmaps(path, new OverlayBitmapEdit
            {
                Bitmap = bitmap,
                Steps = steps.Select(step => new OverlayBitmapStep(OperationOf(step.Operation), step.Operation, step.Source)).ToList(),
                Granularity = size,
                SourceFile = otherFile,
            }, new OverlayFileOptions { BackingPolicy = ImageFiles.BackingPolicy(path, null) });
            if (!result.Succeeded)
            {
                return CommandErrors.Failed(parse, result.Error!);
            }
            return 0;
        }));
        return command;
    }

    /// <summary>The operations in command-line order (qemu-img applies them in that order), each --merge with its SOURCE.</summary>
    private static List<(string, string?)> StepsInOrder(IReadOnlyList<Token> tokens)
    {
        List<(string, string?)> steps = [];
        for (int i = 0; i < tokens.Count; i++)
        {
            if (tokens[i].Type == TokenType.Option && Operations.Contains(tokens[i].Value))
            {
                string? source = tokens[i].Value == "--merge" && i + 1 < tokens.Count ? tokens[i + 1].Value : null;
                steps.Add((tokens[i].Value, source));
            }
        }
        return steps;
    }

    private static bool HoldsBitmaps(OverlayFormat? format) => format != null && format.Refuses(OverlayFileOperation.Bitmaps, "") == null;

    private static OverlayBitmapOperation OperationOf(string option) => option switch
    {
        "--add" => OverlayBitmapOperation.Add,
        "--remove" => OverlayBitmapOperation.Remove,
        "--clear" => OverlayBitmapOperation.Clear,
        "--enable" => OverlayBitmapOperation.Enable,
        "--disable" => OverlayBitmapOperation.Disable,
        _ => OverlayBitmapOperation.Merge,
    };
}
