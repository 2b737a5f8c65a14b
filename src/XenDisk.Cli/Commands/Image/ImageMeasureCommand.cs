using System.CommandLine;
using System.Globalization;
using System.Text.Json.Serialization;
using XenDisk.Cow.Overlays;
using XenDisk.Storage;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// `xendisk image measure [-O raw|qcow2] (--size SIZE | [-f FMT] IMAGE) [--json]`, as qemu-img measure:
/// the file size a new image needs ("required size": what convert would write) and the size it
/// reaches when every cluster is allocated ("fully allocated size"); an overlay format estimates its
/// own (<see cref="OverlayFormat.Measure"/>), with XenDisk's (and qemu-img's) default settings.
/// </summary>
internal static class ImageMeasureCommand
{
    /// <summary>The sizes, with qemu-img measure's JSON names.</summary>
    internal sealed record Measurement(
        [property: JsonPropertyName("required")] long Required,
        [property: JsonPropertyName("fully-allocated")] long FullyAllocated);

    public static Command Create()
    {
        var format = ImageFiles.FormatOption();
        var outputFormat = new Option<string>("-O", "--output-format") { Description = "The format to measure for: raw or qcow2 (default raw, as qemu-img)", DefaultValueFactory = _ => "raw" };
        var size = new Option<string?>("--size") { Description = "Measure a new, empty image of this virtual size instead of an existing image's contents" };
        var json = new Option<bool>("--json") { Description = "Print the sizes as JSON" };
        var allowBase = ImageFiles.AllowBaseOption();
        var image = new Argument<string?>("IMAGE") { Description = "The image whose contents are measured", Arity = ArgumentArity.ZeroOrOne };
        var command = new Command("measure", "How large a new raw or qcow2 image of an image's contents (or of --size) would be")
        {
            format, outputFormat, size, json, allowBase, image,
        };
        command.SetAction((parse, cancellationToken) => CommandRunner.RunAsync(parse, cancellationToken, () =>
        {
            if (!ImageFormats.TryParse(parse.GetValue(outputFormat), out ImageFormat kind))
            {
                return CommandErrors.Invalid(parse, $"cannot measure for the format '{parse.GetValue(outputFormat)}' (use raw or qcow2)");
            }
            OverlayFormat? overlay = ImageFormats.Overlay(kind);
            if (overlay?.Refuses(OverlayFileOperation.Measure, "") is { } refusal)
            {
                return CommandErrors.Invalid(parse, refusal.Error!);
            }
            string? sizeText = parse.GetValue(size);
            string? path = parse.GetValue(image);
            if ((sizeText == null) == (path == null))
            {
                return CommandErrors.Invalid(parse, "give either --size SIZE or an IMAGE, not both");
            }
            long virtualSize;
            long dataBytes;
            if (sizeText != null)
            {
                if (!SizeText.TryParse(sizeText, out virtualSize, out string error))
                {
                    return CommandErrors.Invalid(parse, $"invalid --size '{sizeText}': {error}");
                }
                // qemu-img measure --size: an empty image needs only its metadata (qcow2) or all of it (raw).
                dataBytes = overlay == null ? virtualSize : 0;
            }
            else
            {
                if (!ImageFiles.TryResolveFormat(parse, path!, parse.GetValue(format), out ImageFormat sourceKind, out int exitCode))
                {
                    return exitCode;
                }
                using IBlockDevice source = ImageFiles.OpenForIo(path!, sourceKind, parse.GetValue(allowBase), readOnly: true);
                virtualSize = source.Info.SizeBytes;
                // QEMU's raw_measure: a raw target needs the whole disk whatever it holds (its holes are
                // the file system's business); an overlay format leaves out the units that read as zeros.
                dataBytes = overlay == null ? virtualSize : DataBytes(source, path!, overlay.AllocationUnit, cancellationToken);
            }
            // qcow2_measure: the source's size rounded up to whole sectors.
            virtualSize = (virtualSize + 511) / 512 * 512;
            Measurement measurement = overlay?.Measure(virtualSize, dataBytes) is { } estimate
                ? new Measurement(estimate.Required, estimate.FullyAllocated)
                : new Measurement(dataBytes, virtualSize);
            if (parse.WantsJson())
            {
                parse.WriteJson(measurement, ImageJsonContext.Default.Measurement);
            }
            else
            {
                parse.Out().WriteLine(string.Create(CultureInfo.InvariantCulture, $"required size: {measurement.Required}"));
                parse.Out().WriteLine(string.Create(CultureInfo.InvariantCulture, $"fully allocated size: {measurement.FullyAllocated}"));
            }
            return 0;
        }));
        return command;
    }

    /// <summary>Bytes of <paramref name="unit"/>-sized units holding anything but zeros: what convert writes (a qcow2 target allocates whole clusters).</summary>
    private static long DataBytes(IBlockDevice source, string name, long unit, CancellationToken cancellationToken)
    {
        long size = source.Info.SizeBytes;
        long bytes = 0;
        using ImageChunk chunk = new();
        for (long offset = 0; offset < size; offset += ImageChunk.Bytes)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int length = ImageChunk.LengthAt(offset, size);
            Span<byte> data = chunk.Read(source, name, offset, length);
            for (int at = 0; at < length; at += (int)unit)
            {
                int piece = (int)Math.Min(unit, length - at);
                if (data.Slice(at, piece).IndexOfAnyExcept((byte)0) >= 0)
                {
                    bytes += unit;
                }
            }
        }
        return bytes;
    }
}
