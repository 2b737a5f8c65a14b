using System.CommandLine;
using System.Globalization;
using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Qcow2;
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
    private const string Qcow2Keys = "cluster_size, extended_l2, lazy_refcounts, refcount_bits, policy";
    private const string BitmapKeys = "grain, preallocation";

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
            if (string.IsNullOrEmpty(baseName))
            {
                if (baseFormat != null)
                {
                    return CommandErrors.Invalid(parse, "-F gives the format of a base, but no base (-b) was given");
                }
                if (kind == ImageFormat.Bitmap)
                {
                    return CommandErrors.Invalid(parse, "a bitmap overlay needs its base: give -b BASE");
                }
                if (sizeText == null)
                {
                    return CommandErrors.Invalid(parse, "SIZE is required when there is no base (-b)");
                }
            }
            else if (kind == ImageFormat.Raw)
            {
                return CommandErrors.Invalid(parse, "raw images have no base; use -f qcow2 or -f bitmap for an overlay");
            }
            else if (kind == ImageFormat.Qcow2 && baseFormat == null)
            {
                return CommandErrors.Invalid(parse, "-b needs the base's format too (-F raw or -F qcow2): XenDisk never probes a base's format");
            }
            else if (baseFormat is not (null or "raw" or "qcow2"))
            {
                return CommandErrors.Invalid(parse, $"unknown base format '{baseFormat}' (use raw or qcow2)");
            }
            else if (kind == ImageFormat.Bitmap && baseFormat == "qcow2")
            {
                return CommandErrors.Invalid(parse, "a bitmap overlay's base must be raw (-F raw)");
            }
            bool lun = ImageLuns.IsLun(path);
            if (lun && kind != ImageFormat.Bitmap)
            {
                return CommandErrors.Invalid(parse, kind == ImageFormat.Qcow2
                    ? $"'{path}': qcow2 images live in files; a LUN holds a raw disk or a bitmap overlay (-f bitmap)"
                    : $"'{path}': a LUN is created on its target; on an existing LUN, image create makes a bitmap overlay (-f bitmap)");
            }
            if (lun && !string.IsNullOrEmpty(baseName) && !ImageLuns.IsLun(baseName) && !Path.IsPathFullyQualified(baseName))
            {
                return CommandErrors.Invalid(parse, $"the base '{baseName}' is relative, and a LUN has no directory to resolve it in: give an absolute path or a LUN's URL");
            }
            if (!string.IsNullOrEmpty(baseName) && ImageLuns.IsLun(baseName) && baseFormat == "qcow2")
            {
                return CommandErrors.Invalid(parse, $"the base '{baseName}' is a LUN, which holds a raw disk (-F raw)");
            }
            if (lun && ImageLuns.Probe(path) == ImageFormat.Bitmap)
            {
                return CommandErrors.Failed(parse, $"'{path}' already holds a bitmap overlay; xendisk does not overwrite images (clear its first block first: xendisk io -f raw {path} -c 'write -z 0 4k')");
            }
            if (!lun && (File.Exists(path) || Directory.Exists(path)))
            {
                return CommandErrors.Failed(parse, $"'{path}' already exists; xendisk does not overwrite images (remove it first)");
            }

            string? basePath = null;
            if (!string.IsNullOrEmpty(baseName))
            {
                basePath = Qcow2Disk.ResolveBackingPath(path, baseName);
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

            int exit = kind switch
            {
                ImageFormat.Qcow2 => CreateQcow2(parse, path, virtualSize, baseName, baseFormat, settings),
                ImageFormat.Bitmap => CreateBitmap(parse, path, virtualSize, basePath!, settings),
                _ => CreateRaw(parse, path, virtualSize, settings),
            };
            if (exit != 0)
            {
                return exit;
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

    private static int CreateQcow2(ParseResult parse, string path, long virtualSize, string? baseName, string? baseFormat, Dictionary<string, string> settings)
    {
        int clusterSize = 64 * 1024;
        bool? extendedL2 = null;
        bool lazyRefcounts = false;
        int refcountOrder = 4;
        foreach ((string key, string value) in settings)
        {
            switch (key)
            {
                case "cluster_size":
                    if (!SizeText.TryParse(value, out long cluster, out _) || cluster is < 512 or > 2 * 1024 * 1024 || !long.IsPow2(cluster))
                    {
                        return CommandErrors.Invalid(parse, $"cluster_size={value}: a power of two from 512 to 2M is needed");
                    }
                    clusterSize = (int)cluster;
                    break;
                case "extended_l2":
                    if (!TryParseOnOff(value, out bool on))
                    {
                        return CommandErrors.Invalid(parse, $"extended_l2={value}: use on or off");
                    }
                    extendedL2 = on;
                    break;
                case "lazy_refcounts":
                    if (!TryParseOnOff(value, out lazyRefcounts))
                    {
                        return CommandErrors.Invalid(parse, $"lazy_refcounts={value}: use on or off");
                    }
                    break;
                case "refcount_bits":
                    if (!int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out int bits) || bits is < 1 or > 64 || !int.IsPow2(bits))
                    {
                        return CommandErrors.Invalid(parse, $"refcount_bits={value}: a power of two from 1 to 64 is needed");
                    }
                    refcountOrder = int.Log2(bits);
                    break;
                case "policy":
                    switch (value)
                    {
                        case "lazy":
                            lazyRefcounts = true;
                            break;
                        case "flush" or "sync":
                            // Chosen when the disk is opened (the target's policy=); nothing in the image records them.
                            break;
                        case "transient":
                            return CommandErrors.Invalid(parse, "policy=transient overlays are made and thrown away by the backend when a disk opens (cow:BASE,OVERLAY,policy=transient); there is nothing to create");
                        default:
                            return CommandErrors.Invalid(parse, $"policy={value} is not a metadata policy (sync, flush, lazy or transient)");
                    }
                    break;
                default:
                    return CommandErrors.Invalid(parse, $"unknown qcow2 option '{key}' (known: {Qcow2Keys})");
            }
        }
        try
        {
            Qcow2Disk.Create(path, new Qcow2CreateOptions
            {
                VirtualSize = virtualSize,
                ClusterSize = clusterSize,
                ExtendedL2 = extendedL2,
                BackingFile = string.IsNullOrEmpty(baseName) ? null : baseName,
                BackingFormat = string.IsNullOrEmpty(baseName) ? null : baseFormat,
                RefcountOrder = refcountOrder,
                LazyRefcounts = lazyRefcounts,
            });
        }
        catch (ArgumentException e)
        {
            return CommandErrors.Invalid(parse, $"cannot create '{path}': {e.Message}");
        }
        return 0;
    }

    private static int CreateBitmap(ParseResult parse, string path, long virtualSize, string basePath, Dictionary<string, string> settings)
    {
        int grainSize = BitmapFormat.DefaultGrainSize;
        FilePreallocation preallocation = FilePreallocation.Falloc;
        foreach ((string key, string value) in settings)
        {
            if (key == "preallocation")
            {
                switch (value)
                {
                    case "off": preallocation = FilePreallocation.Off; break;
                    case "falloc": preallocation = FilePreallocation.Falloc; break;
                    case "full": preallocation = FilePreallocation.Full; break;
                    default:
                        return CommandErrors.Invalid(parse, $"preallocation={value}: off (sparse), falloc (the default: blocks allocated, nothing written) or full (zeros written: every write is then an overwrite in place)");
                }
                continue;
            }
            if (key != "grain")
            {
                return CommandErrors.Invalid(parse, key == "policy"
                    ? "a bitmap overlay records no policy; choose it when the disk is opened (the target's policy=)"
                    : $"unknown bitmap option '{key}' (known: {BitmapKeys})");
            }
            if (!SizeText.TryParse(value, out long grain, out _) || grain < BitmapFormat.MinimumGrainSize || grain > BitmapFormat.MaximumGrainSize || !long.IsPow2(grain))
            {
                return CommandErrors.Invalid(parse, $"grain={value}: a power of two from 512 to 64k is needed");
            }
            grainSize = (int)grain;
        }
        long cowSize = BitmapOverlay.RequiredCowSize(virtualSize, grainSize);
        bool lun = ImageLuns.IsLun(path);
        if (lun && settings.ContainsKey("preallocation"))
        {
            return CommandErrors.Invalid(parse, "preallocation= applies to overlay files; a LUN's blocks are its target's to allocate");
        }
        try
        {
            if (!lun)
            {
                OverlayFiles.CreateBitmapFile(path, cowSize, preallocation);
            }
        }
        catch (StorageException e)
        {
            return CommandErrors.Failed(parse, e.Message);
        }
        try
        {
            IBlockDevice baseDevice = ImageFiles.OpenRawImage(basePath, readOnly: true);
            IBlockDevice? cow = null;
            try
            {
                // On a LUN, BitmapOverlay.Create refuses one smaller than cowSize, naming both sizes, and
                // zeroes the map before it writes the header: whatever the LUN held is no longer read.
                cow = ImageFiles.OpenRawImage(path, readOnly: false);
                BitmapOverlay.Create(cow, baseDevice, new BitmapCreateOptions { GrainSize = grainSize, VirtualSize = virtualSize, BaseName = basePath },
                    new BitmapOverlayOptions { OwnsDevices = true }).Dispose();
            }
            catch
            {
                cow?.Dispose();
                baseDevice.Dispose();
                throw;
            }
        }
        catch when (!lun)
        {
            File.Delete(path);
            throw;
        }
        return 0;
    }

    private static int CreateRaw(ParseResult parse, string path, long virtualSize, Dictionary<string, string> settings)
    {
        if (settings.Count > 0)
        {
            return CommandErrors.Invalid(parse, $"raw images take no options (got '{settings.Keys.First()}')");
        }
        using var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None);
        RandomAccess.SetLength(handle, virtualSize);
        return 0;
    }

    /// <summary>The size of the disk a base presents: its length for raw, the header's virtual size for qcow2.</summary>
    private static long ReadVirtualSize(string basePath, string format)
    {
        if (format == "qcow2")
        {
            using FileImageDevice device = FileImageDevice.Open(basePath, readOnly: true);
            return Qcow2Disk.ReadHeader(device).VirtualSize;
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

    private static bool TryParseOnOff(string value, out bool on)
    {
        on = value is "on" or "true" or "yes";
        return on || value is "off" or "false" or "no";
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
