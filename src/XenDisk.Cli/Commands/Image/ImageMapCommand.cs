using System.CommandLine;
using System.Globalization;
using XenDisk.Cow.Overlays;
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
    /// <summary>One run of the disk with one source; <see cref="Kind"/> is "data", "zero", "base", "compressed" or "unsupported".</summary>
    internal sealed record Extent(long Offset, long Length, string Kind, long? HostOffset);

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
            if (!ImageFiles.TryResolveOverlay(parse, path, parse.GetValue(format), out OverlayFormat? overlay, out int exitCode))
            {
                return exitCode;
            }
            List<Extent> extents;
            using (ProgressBar progress = new(parse.Error(), "mapping"))
            {
                extents = overlay is null ? MapRaw(path) : Map(path, overlay, progress);
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

    /// <summary>The overlay's own metadata (L2 tables, grain map): "base" means "falls through to the backing file", whatever that holds.</summary>
    private static List<Extent> Map(string path, OverlayFormat format, ProgressBar progress)
    {
        using IBlockDevice device = ImageFiles.OpenImage(path, readOnly: true);
        return format.Map(device, progress.Callback).Select(e => new Extent(e.Offset, e.Length, Name(e.Kind), e.HostOffset)).ToList();
    }

    private static List<Extent> MapRaw(string path)
    {
        using IBlockDevice device = ImageFiles.OpenImage(path, readOnly: true);
        long size = device.Info.SizeBytes;
        return size == 0 ? [] : [new Extent(0, size, Name(OverlayExtentKind.Data), 0)];
    }

    private static string Name(OverlayExtentKind kind) => kind switch
    {
        OverlayExtentKind.Data => "data",
        OverlayExtentKind.Zero => "zero",
        OverlayExtentKind.Base => "base",
        OverlayExtentKind.Compressed => "compressed",
        _ => "unsupported",
    };

    private static string Hex(long value) => "0x" + value.ToString("x", CultureInfo.InvariantCulture);
}
