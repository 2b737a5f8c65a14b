using System.CommandLine;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Storage;
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
            int? version = null;
            bool? lazy = null;
            foreach (string item in (parse.GetValue(options) ?? []).SelectMany(o => o.Split(',', StringSplitOptions.RemoveEmptyEntries)))
            {
                string[] pair = item.Split('=', 2);
                string value = pair.Length == 2 ? pair[1] : "";
                switch (pair[0])
                {
                    case "compat":
                        version = value switch { "0.10" or "v2" => 2, "1.1" or "v3" => 3, _ => 0 };
                        if (version == 0)
                        {
                            return CommandErrors.Invalid(parse, $"Invalid compatibility level: '{value}' (0.10 or 1.1)");
                        }
                        break;
                    case "lazy_refcounts":
                        lazy = value switch { "on" => true, "off" => false, _ => null };
                        if (lazy == null)
                        {
                            return CommandErrors.Invalid(parse, $"lazy_refcounts is on or off, not '{value}'");
                        }
                        break;
                    default:
                        return CommandErrors.Invalid(parse, $"amending '{pair[0]}' is not supported (compat and lazy_refcounts are)");
                }
            }
            if (version == null && lazy == null)
            {
                return CommandErrors.Invalid(parse, "nothing to amend: give -o compat=... and/or -o lazy_refcounts=...");
            }
            if (!ImageFiles.TryResolveFormat(parse, path, parse.GetValue(format), out ImageFormat kind, out int exitCode))
            {
                return exitCode;
            }
            if (kind != ImageFormat.Qcow2)
            {
                return CommandErrors.Failed(parse, $"'{path}' is not a qcow2 image; amend changes qcow2 images");
            }
            string fullPath = Path.GetFullPath(path);
            int current;
            using (FileImageDevice device = FileImageDevice.Open(fullPath, readOnly: true))
            {
                current = Qcow2Disk.ReadHeader(device).Version;
            }
            int target = version ?? current;
            if (lazy == true && target < 3)
            {
                return CommandErrors.Failed(parse, "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)");
            }
            if (current < 3)
            {
                if (target >= 3)
                {
                    using FileImageDevice device = FileImageDevice.Open(fullPath, readOnly: false);
                    Qcow2Image.UpgradeToVersion3(device, lazy == true);
                }
                return 0;
            }
            using Qcow2Image qcow2 = Qcow2Disk.Open(fullPath, new Qcow2OpenOptions { BackingPolicy = ImageFiles.BackingPolicy(path, null) });
            IoStatus status = IoStatus.Ok;
            if (lazy is bool on)
            {
                status = qcow2.SetLazyRefcounts(on);
            }
            if (status == IoStatus.Ok && target < 3)
            {
                status = qcow2.DowngradeToVersion2();
            }
            if (status == IoStatus.Ok)
            {
                status = qcow2.Close();
            }
            return status == IoStatus.Ok ? 0 : CommandErrors.Failed(parse, $"amending '{path}' failed: {qcow2.LastError ?? status.Describe()}");
        }));
        return command;
    }
}
