using System.CommandLine;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// `xendisk image resize [-f FMT] [--shrink] IMAGE [+|-]SIZE`, as qemu-img resize: an absolute size,
/// or a change with + or -. Shrinking drops data, so (as qemu-img requires since 2.11) it needs
/// --shrink. A qcow2 image grows in place (its L1 table with it); shrinking qcow2 is refused, since
/// the engine does not free clusters beyond a new end. Raw files grow and shrink; bitmap overlays
/// track a fixed base and are refused.
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
            if (kind == ImageFormat.Bitmap)
            {
                return CommandErrors.Failed(parse, $"'{path}' is a bitmap overlay, whose size is its base's; resize the base and make a new overlay");
            }
            string fullPath = Path.GetFullPath(path);
            if (kind == ImageFormat.Qcow2)
            {
                using Qcow2Image qcow2 = Qcow2Disk.Open(fullPath, new Qcow2OpenOptions { BackingPolicy = ImageFiles.BackingPolicy(path, null) });
                long newSize = Target(qcow2.Info.SizeBytes, sign, amount);
                if (!Allowed(parse, qcow2.Info.SizeBytes, newSize, parse.GetValue(shrink), out int refused))
                {
                    return refused;
                }
                if (newSize < qcow2.Info.SizeBytes)
                {
                    return CommandErrors.Failed(parse, "shrinking a qcow2 image is not supported (the engine does not free clusters beyond a new end); convert it and resize the raw copy");
                }
                if (newSize % 512 != 0)
                {
                    return CommandErrors.Invalid(parse, $"the new size ({newSize} bytes) must be a multiple of 512");
                }
                IoStatus status = qcow2.Resize(newSize);
                if (status == IoStatus.Ok)
                {
                    status = qcow2.Close();
                }
                if (status != IoStatus.Ok)
                {
                    return CommandErrors.Failed(parse, $"resizing '{path}' failed: {qcow2.LastError ?? status.Describe()}");
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
