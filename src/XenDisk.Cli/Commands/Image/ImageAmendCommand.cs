using System.CommandLine;
using XenDisk.Cow.Overlays;
using XenDisk.Storage;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// `xendisk image amend [-f FMT] -o compat=0.10|1.1,lazy_refcounts=on|off IMAGE`, as qemu-img amend
/// for those two options, with QEMU's refusals: a downgrade needs 16-bit refcounts and no
/// incompatible feature version 2 cannot express (extended L2 entries, the corrupt bit, an external
/// data file), zstd-compressed clusters stay on version 3, and lazy refcounts need version 3.
/// Persistent bitmaps also keep an image on version 3 (QEMU would drop them).
/// </summary>
internal static class ImageAmendCommand
{
    public static Command Create()
    {
        var format = ImageFiles.FormatOption();
        var options = new Option<string[]>("-o") { Description = "compat=0.10|1.1 and/or lazy_refcounts=on|off, comma separated (may be repeated)" };
        var image = new Argument<string>("IMAGE") { Description = "The qcow2 image (no one may have it open)" };
        var command = new Command("amend", "Change a qcow2 image's version (compat) or lazy refcounts")
        {
            format, options, image,
        };
        command.SetAction((parse, cancellationToken) => CommandRunner.RunAsync(parse, cancellationToken, () =>
        {
            string path = parse.GetValue(image)!;
            string[] settings = (parse.GetValue(options) ?? []).SelectMany(o => o.Split(',', StringSplitOptions.RemoveEmptyEntries)).ToArray();
            if (settings.Length == 0)
            {
                return CommandErrors.Invalid(parse, "nothing to amend: give -o compat=... and/or -o lazy_refcounts=...");
            }
            if (!ImageFiles.TryResolveFormat(parse, path, parse.GetValue(format), out ImageFormat kind, out int exitCode))
            {
                return exitCode;
            }
            if (ImageFormats.Overlay(kind) is not { } overlay)
            {
                return CommandErrors.Failed(parse, $"'{path}' is not a qcow2 image; amend changes qcow2 images");
            }
            OverlayOperationResult result = overlay.Amend(path, settings, new OverlayFileOptions { BackingPolicy = ImageFiles.BackingPolicy(path, null) });
            if (result.Succeeded)
            {
                return 0;
            }
            // An option the format does not take is the operator's to change; anything else failed.
            return result.Status == IoStatus.OutOfRange ? CommandErrors.Invalid(parse, result.Error!) : CommandErrors.Failed(parse, result.Error!);
        }));
        return command;
    }
}
