using System.CommandLine;
using XenDisk.Cow.Overlays;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// `xendisk image resize [-f FMT] [--shrink] IMAGE [+|-]SIZE`, as qemu-img resize: an absolute size,
/// or a change with + or -. Shrinking drops data, so (as qemu-img requires since 2.11) it needs
/// --shrink. Raw files grow and shrink; an overlay's format says what it can take
/// (<see cref="OverlayFormat.Resize"/>) and refuses the rest with the reason.
/// </summary>
internal static class ImageResizeCommand
{
    public static Command Create()
    {
        var format = ImageFiles.FormatOption();
        var shrink = new Option<bool>("--shrink") { Description = "Allow a smaller size (data beyond it is lost)" };
        var image = new Argument<string>("IMAGE") { Description = "The image file (no one may have it open)" };
        var size = new Argument<string>("SIZE") { Description = "The new virtual size, or +SIZE / -SIZE to grow or shrink by it (k/M/G/T suffixes)" };
        var command = new Command("resize", "Change an image's virtual size (grow; shrink raw images with --shrink)")
        {
            format, shrink, image, size,
        };
        command.SetAction((parse, cancellationToken) => CommandRunner.RunAsync(parse, cancellationToken, () =>
        {
            string path = parse.GetValue(image)!;
            string text = parse.GetValue(size)!.Trim();
            int sign = text.StartsWith('+') ? 1 : text.StartsWith('-') ? -1 : 0;
            if (!SizeText.TryParse(sign == 0 ? text : text[1..], out long amount, out string error))
            {
                return CommandErrors.Invalid(parse, $"invalid image size '{text}': {error}");
            }
            if (!ImageFiles.TryResolveFormat(parse, path, parse.GetValue(format), out ImageFormat kind, out int exitCode))
            {
                return exitCode;
            }
            string fullPath = Path.GetFullPath(path);
            if (ImageFormats.Overlay(kind) is { } overlay)
            {
                if (overlay.Refuses(OverlayFileOperation.Resize, path) is { } refusal)
                {
                    return CommandErrors.Failed(parse, refusal.Error!);
                }
                int refused = 0;
                OverlayOperationResult result = overlay.Resize(path, current =>
                {
                    long target = Target(current, sign, amount);
                    return Allowed(parse, current, target, parse.GetValue(shrink), out refused) ? target : null;
                }, new OverlayFileOptions { BackingPolicy = ImageFiles.BackingPolicy(path, null) });
                if (refused != 0)
                {
                    return refused;
                }
                if (!result.Succeeded)
                {
                    // A size the format cannot take is the operator's to change; anything else failed.
                    return result.Status == IoStatus.OutOfRange ? CommandErrors.Invalid(parse, result.Error!) : CommandErrors.Failed(parse, result.Error!);
                }
            }
            else
            {
                using FileImageDevice raw = FileImageDevice.Open(fullPath, readOnly: false);
                long newSize = Target(raw.Info.SizeBytes, sign, amount);
                if (!Allowed(parse, raw.Info.SizeBytes, newSize, parse.GetValue(shrink), out int refused))
                {
                    return refused;
                }
                IoStatus status = raw.SetLength(newSize);
                if (status != IoStatus.Ok)
                {
                    return CommandErrors.Failed(parse, $"resizing '{path}' failed: {status.Describe()}");
                }
            }
            parse.Out().WriteLine("Image resized.");
            return 0;
        }));
        return command;
    }

    private static long Target(long current, int sign, long amount) => sign switch
    {
        > 0 => current > long.MaxValue - amount ? -1 : current + amount,
        < 0 => current - amount,
        _ => amount,
    };

    private static bool Allowed(ParseResult parse, long current, long newSize, bool shrink, out int exitCode)
    {
        exitCode = 0;
        if (newSize < 0)
        {
            exitCode = CommandErrors.Invalid(parse, "the new size would be negative or too large");
            return false;
        }
        if (newSize < current && !shrink)
        {
            // qemu-img resize's message for the same refusal.
            exitCode = CommandErrors.Invalid(parse, "Use the --shrink option to perform a shrink operation.");
            return false;
        }
        return true;
    }
}
