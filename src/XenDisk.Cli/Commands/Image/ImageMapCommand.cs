using System.CommandLine;
using System.Globalization;
using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// `xendisk image map [--json] IMAGE`: where each range of the virtual disk is served from. Only the
/// image itself is read (its L2 tables or grain map), never its base: "base" means "falls through to
/// the backing file", whatever that holds.
/// </summary>
internal static class ImageMapCommand
{
    /// <summary>Where a range reads from.</summary>
    internal enum ExtentKind
    {
        /// <summary>Data stored in this image, at <see cref="Extent.HostOffset"/> of its file.</summary>
        Data,
        /// <summary>Reads as zeros (zero clusters, discarded grains, beyond the base's end).</summary>
        Zero,
        /// <summary>Falls through to the base (backing file).</summary>
        Base,
        /// <summary>Invalid entries, which XenDisk does not serve.</summary>
        Unsupported,
        /// <summary>A compressed qcow2 cluster; the host offset is where its compressed data begins.</summary>
        Compressed,
    }

    /// <summary>One run of the disk with one source; <see cref="Kind"/> is "data", "zero", "base", "compressed" or "unsupported".</summary>
    internal sealed record Extent(long Offset, long Length, string Kind, long? HostOffset);

    /// <summary>Bitmap maps are read in pieces of this size (the whole map of a 256 GiB disk at 4 KiB grains is 16 MiB).</summary>
    private const int MapChunkBytes = 1024 * 1024;

    public static Command Create()
    {
        var format = ImageFiles.FormatOption();
        var json = new Option<bool>("--json") { Description = "Print the extents as a JSON array" };
        var image = new Argument<string>("IMAGE") { Description = "The image file" };
        var command = new Command("map", "Show the allocation of an image: data in the overlay, zeros, or from the base")
        {
            format, json, image,
        };
        command.SetAction((parse, cancellationToken) => CommandRunner.RunAsync(parse, cancellationToken, () =>
        {
            string path = parse.GetValue(image)!;
            if (!ImageFiles.TryResolveFormat(parse, path, parse.GetValue(format), out ImageFormat kind, out int exitCode))
            {
                return exitCode;
            }
            List<Extent> extents;
            using (ProgressBar progress = new(parse.Error(), "mapping"))
            {
                extents = kind switch
                {
                    ImageFormat.Qcow2 => MapQcow2(path, progress),
                    ImageFormat.Bitmap => MapBitmap(path, progress),
                    _ => MapRaw(path),
                };
                progress.Complete();
            }
            if (parse.WantsJson())
            {
                parse.WriteJson(extents, ImageJsonContext.Default.ListExtent);
            }
            else
            {
                TextWriter output = parse.Out();
                output.WriteLine($"{"Offset",-20}{"Length",-20}{"Source",-12}Host offset");
                foreach (Extent e in extents)
                {
                    string host = e.HostOffset is long h ? Hex(h) : "-";
                    output.WriteLine($"{Hex(e.Offset),-20}{Hex(e.Length),-20}{e.Kind,-12}{host}");
                }
            }
            return 0;
        }));
        return command;
    }

    private static List<Extent> MapQcow2(string path, ProgressBar progress)
    {
        FileImageDevice file = FileImageDevice.Open(Path.GetFullPath(path), readOnly: true);
        Qcow2Image image;
        try
        {
            // The map is this image's own tables: the backing chain is neither needed nor opened.
            image = Qcow2Image.Open(file, null, new Qcow2OpenOptions { ReadOnly = true, AllowMissingBacking = true });
        }
        catch
        {
            file.Dispose();
            throw;
        }
        using (image)
        {
            return image.Map(progress.Callback).Select(e => new Extent(e.Offset, e.Length, Name(e.Kind switch
            {
                Qcow2ExtentKind.Data => ExtentKind.Data,
                Qcow2ExtentKind.Zero => ExtentKind.Zero,
                Qcow2ExtentKind.Backing => ExtentKind.Base,
                Qcow2ExtentKind.Compressed => ExtentKind.Compressed,
                _ => ExtentKind.Unsupported,
            }), e.Kind is Qcow2ExtentKind.Data or Qcow2ExtentKind.Compressed ? e.HostOffset : null)).ToList();
        }
    }

    /// <summary>
    /// Decodes the grain map as docs/BITMAP-FORMAT.md lays it out (grain g at bits 2*(g mod 4) of map
    /// byte g/4), after the header has been validated by <see cref="BitmapOverlay.ReadHeader"/>.
    /// </summary>
    private static List<Extent> MapBitmap(string path, ProgressBar progress)
    {
        using FileImageDevice device = FileImageDevice.Open(Path.GetFullPath(path), readOnly: true);
        BitmapHeader header = BitmapOverlay.ReadHeader(device);
        List<Extent> extents = [];
        long grains = header.GrainCount;
        long grainSize = header.GrainSize;
        byte[] chunk = new byte[MapChunkBytes];
        for (long firstGrain = 0; firstGrain < grains; firstGrain += (long)MapChunkBytes * 4)
        {
            long bytes = Math.Min(MapChunkBytes, (grains - firstGrain + 3) / 4);
            // The map length is a multiple of 4 KiB and the device's sectors are 512 bytes: round the read up.
            int readLength = (int)((bytes + 511) / 512 * 512);
            IoStatus status = device.ReadAt(header.BitmapOffset + firstGrain / 4, chunk.AsSpan(0, readLength));
            if (status != IoStatus.Ok)
            {
                throw new StorageException($"cannot read the grain map of '{path}' ({status.Describe()})");
            }
            long lastGrain = Math.Min(grains, firstGrain + bytes * 4);
            for (long grain = firstGrain; grain < lastGrain; grain++)
            {
                int state = (chunk[(int)((grain - firstGrain) / 4)] >> (int)(2 * (grain % 4))) & 3;
                long offset = grain * grainSize;
                long length = Math.Min(grainSize, header.VirtualSize - offset);
                ExtentKind kind = state switch
                {
                    (int)GrainState.Mapped => ExtentKind.Data,
                    (int)GrainState.Discarded => ExtentKind.Zero,
                    (int)GrainState.Base => offset >= header.BaseSize ? ExtentKind.Zero : ExtentKind.Base,
                    _ => ExtentKind.Unsupported,
                };
                Add(extents, offset, length, Name(kind), kind == ExtentKind.Data ? header.DataOffset + offset : null);
            }
            progress.Report(lastGrain, grains);
        }
        return extents;
    }

    private static List<Extent> MapRaw(string path)
    {
        using RawBlockDevice device = ImageLocks.OpenRaw(Path.GetFullPath(path), readOnly: true, new RawDeviceOptions { DirectIo = false });
        long size = device.Info.SizeBytes;
        return size == 0 ? [] : [new Extent(0, size, Name(ExtentKind.Data), 0)];
    }

    /// <summary>Appends, merging with the previous extent when the source continues (data also contiguous in the file).</summary>
    private static void Add(List<Extent> extents, long offset, long length, string kind, long? host)
    {
        if (extents.Count > 0)
        {
            Extent last = extents[^1];
            if (last.Kind == kind && last.Offset + last.Length == offset && (host == null || last.HostOffset + last.Length == host))
            {
                extents[^1] = last with { Length = last.Length + length };
                return;
            }
        }
        extents.Add(new Extent(offset, length, kind, host));
    }

    private static string Name(ExtentKind kind) => kind switch
    {
        ExtentKind.Data => "data",
        ExtentKind.Zero => "zero",
        ExtentKind.Base => "base",
        ExtentKind.Compressed => "compressed",
        _ => "unsupported",
    };

    private static string Hex(long value) => "0x" + value.ToString("x", CultureInfo.InvariantCulture);
}
