using System.CommandLine;
using System.Globalization;
using XenDisk.Cow.Overlays;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// `xendisk image create -f qcow2|bitmap|raw [-b BASE -F raw|qcow2] [-o key=value,...] IMAGE [SIZE]`,
/// in qemu-img create's argument style. As in QEMU, a relative BASE is relative to the new image's
/// directory (that is how it will be resolved when the image is opened), and SIZE defaults to the base's.
/// An iSCSI LUN may be the base (raw) of either overlay, and the device of a bitmap overlay: a LUN
/// is made on its target, so creating one writes the overlay's header and map onto the LUN as it is.
/// </summary>
internal static class ImageCreateCommand
{

    public static Command Create()
    {
        var format = new Option<string>("-f", "--format") { Description = $"Image format: {ImageFormats.Names}", DefaultValueFactory = _ => "raw" };
        var backing = new Option<string?>("-b", "--backing") { Description = "The base (backing file); a relative name is relative to the new image's directory" };
        var backingFormat = new Option<string?>("-F", "--backing-format") { Description = "The base's format: raw or qcow2 (never probed)" };
        var options = new Option<string[]>("-o", "--options")
        {
            Description = "Format options, comma-separated (repeatable). qcow2: cluster_size=64k, extended_l2=on|off, lazy_refcounts=on|off, "
                + "refcount_bits=16, policy=lazy (records lazy_refcounts; other policies are chosen when the disk is opened). bitmap: grain=4k",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var json = new Option<bool>("--json") { Description = "Describe the new image as JSON" };
        var image = new Argument<string>("IMAGE") { Description = "The image file to create (must not exist)" };
        var size = new Argument<string?>("SIZE") { Description = "Virtual size: bytes, or with a k/M/G/T suffix (default: the base's size)", Arity = ArgumentArity.ZeroOrOne };
        var command = new Command("create", "Create an image: raw, a qcow2 overlay, or a flat bitmap overlay over a raw base")
        {
            format, backing, backingFormat, options, json, image, size,
        };
        command.SetAction((parse, cancellationToken) => CommandRunner.RunAsync(parse, cancellationToken, () =>
        {
            string path = parse.GetValue(image)!;
            if (!ImageFormats.TryParse(parse.GetValue(format), out ImageFormat kind))
            {
                return CommandErrors.Invalid(parse, $"unknown image format '{parse.GetValue(format)}' (use {ImageFormats.Names})");
            }
            if (!TryParseOptions(parse.GetValue(options) ?? [], out Dictionary<string, string> settings, out string optionError))
            {
                return CommandErrors.Invalid(parse, optionError);
            }
            string? baseName = parse.GetValue(backing);
            string? baseFormat = parse.GetValue(backingFormat);
            string? sizeText = parse.GetValue(size);
            long virtualSize = 0;
            if (sizeText != null)
            {
                if (!SizeText.TryParse(sizeText, out virtualSize, out string sizeError))
                {
                    return CommandErrors.Invalid(parse, $"invalid image size: {sizeError}");
                }
                if (virtualSize <= 0 || virtualSize % 512 != 0)
                {
                    return CommandErrors.Invalid(parse, $"invalid image size {sizeText}: it must be a positive multiple of 512 bytes");
                }
            }
            OverlayFormat? overlay = ImageFormats.Overlay(kind);
            bool hasBase = !string.IsNullOrEmpty(baseName);
            if (!hasBase && baseFormat != null)
            {
                return CommandErrors.Invalid(parse, "-F gives the format of a base, but no base (-b) was given");
            }
            if (hasBase && overlay == null)
            {
                return CommandErrors.Invalid(parse, "raw images have no base; use -f qcow2 or -f bitmap for an overlay");
            }
            if (hasBase && baseFormat is not (null or "raw" or "qcow2"))
            {
                return CommandErrors.Invalid(parse, $"unknown base format '{baseFormat}' (use raw or qcow2)");
            }
            if (overlay?.BaseRefusal(hasBase, baseFormat) is { } baseRefusal)
            {
                return CommandErrors.Invalid(parse, baseRefusal);
            }
            if (!hasBase && sizeText == null)
            {
                return CommandErrors.Invalid(parse, "SIZE is required when there is no base (-b)");
            }
            bool lun = ImageLuns.IsLun(path);
            if (lun && overlay == null)
            {
                return CommandErrors.Invalid(parse, $"'{path}': a LUN is created on its target; on an existing LUN, image create makes a bitmap overlay (-f bitmap)");
            }
            if (lun && overlay!.LunRefusal is { } lunRefusal)
            {
                return CommandErrors.Invalid(parse, $"'{path}': {lunRefusal} (-f bitmap)");
            }
            if (lun && !string.IsNullOrEmpty(baseName) && !ImageLuns.IsLun(baseName) && !Path.IsPathFullyQualified(baseName))
            {
                return CommandErrors.Invalid(parse, $"the base '{baseName}' is relative, and a LUN has no directory to resolve it in: give an absolute path or a LUN's URL");
            }
            if (!string.IsNullOrEmpty(baseName) && ImageLuns.IsLun(baseName) && baseFormat == "qcow2")
            {
                return CommandErrors.Invalid(parse, $"the base '{baseName}' is a LUN, which holds a raw disk (-F raw)");
            }
            if (lun && ImageFormats.Overlay(ImageLuns.Probe(path)) is { } held)
            {
                return CommandErrors.Failed(parse, $"'{path}' already holds a {held.Name} overlay; xendisk does not overwrite images (clear its first block first: xendisk io -f raw {path} -c 'write -z 0 4k')");
            }
            if (!lun && (File.Exists(path) || Directory.Exists(path)))
            {
                return CommandErrors.Failed(parse, $"'{path}' already exists; xendisk does not overwrite images (remove it first)");
            }

            string? basePath = null;
            if (!string.IsNullOrEmpty(baseName))
            {
                basePath = overlay!.ResolveBasePath(path, baseName);
                if (!ImageFiles.Exists(basePath))
                {
                    return CommandErrors.Failed(parse, $"the base '{baseName}' ({basePath}, relative names are relative to the new image's directory) does not exist");
                }
                long baseSize = ReadVirtualSize(basePath, baseFormat ?? "raw");
                if (sizeText == null)
                {
                    virtualSize = baseSize;
                }
            }

            if (overlay == null)
            {
                if (settings.Count > 0)
                {
                    return CommandErrors.Invalid(parse, $"raw images take no options (got '{settings.Keys.First()}')");
                }
                using var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None);
                RandomAccess.SetLength(handle, virtualSize);
            }
            else
            {
                OverlayOperationResult created = overlay.Create(path, new OverlayCreateOptions
                {
                    VirtualSize = virtualSize,
                    BaseName = hasBase ? baseName : null,
                    BaseFormat = hasBase ? baseFormat : null,
                    BasePath = basePath,
                    Settings = settings,
                    ParseSize = text => SizeText.TryParse(text, out long bytes, out _) ? bytes : null,
                    OpenStorage = (storage, storageReadOnly) => ImageFiles.OpenRawImage(storage, storageReadOnly),
                });
                if (!created.Succeeded)
                {
                    return created.Status == IoStatus.OutOfRange ? CommandErrors.Invalid(parse, created.Error!) : CommandErrors.Failed(parse, created.Error!);
                }
            }
            ImageDescription description = ImageDescription.Read(path, kind);
            if (parse.WantsJson())
            {
                parse.WriteJson(description, ImageJsonContext.Default.ImageDescription);
            }
            else
            {
                parse.Out().WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"Formatting '{path}', fmt={description.Format} size={description.VirtualSize}{Describe(description)}"));
            }
            return 0;
        }));
        return command;
    }

    /// <summary>The size of the disk a base presents: its length for raw, the virtual size its format describes for an overlay format.</summary>
    private static long ReadVirtualSize(string basePath, string format)
    {
        if (OverlayFormat.Find(format) is { } overlay)
        {
            using FileImageDevice device = FileImageDevice.Open(basePath, readOnly: true);
            return overlay.Describe(device, basePath).VirtualSize;
        }
        using IBlockDevice raw = ImageFiles.OpenRawImage(basePath, readOnly: true, new RawDeviceOptions { DirectIo = false });
        return raw.Info.SizeBytes;
    }

    /// <summary>"-o a=1,b=2 -o c=3" into one dictionary; a key given twice is refused.</summary>
    internal static bool TryParseOptions(IEnumerable<string> values, out Dictionary<string, string> settings, out string error)
    {
        settings = new Dictionary<string, string>(StringComparer.Ordinal);
        error = "";
        foreach (string value in values)
        {
            foreach (string part in value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
            {
                int equals = part.IndexOf('=');
                if (equals <= 0 || equals == part.Length - 1)
                {
                    error = $"-o '{part}' is not of the form key=value";
                    return false;
                }
                if (!settings.TryAdd(part[..equals], part[(equals + 1)..]))
                {
                    error = $"-o option '{part[..equals]}' is given twice";
                    return false;
                }
            }
        }
        return true;
    }

    private static string Describe(ImageDescription d)
    {
        List<string> parts = [];
        if (d.ClusterSize is int cluster) parts.Add(string.Create(CultureInfo.InvariantCulture, $"cluster_size={cluster}"));
        if (d.GrainSize is int grain) parts.Add(string.Create(CultureInfo.InvariantCulture, $"grain={grain}"));
        if (d.BackingFile != null) parts.Add($"backing_file={d.BackingFile} backing_fmt={d.BackingFormat}");
        if (d.ExtendedL2 is bool extended) parts.Add($"extended_l2={(extended ? "on" : "off")}");
        if (d.LazyRefcounts is bool lazy) parts.Add($"lazy_refcounts={(lazy ? "on" : "off")}");
        if (d.RefcountBits is int bits) parts.Add(string.Create(CultureInfo.InvariantCulture, $"refcount_bits={bits}"));
        return parts.Count == 0 ? "" : " " + string.Join(' ', parts);
    }
}
