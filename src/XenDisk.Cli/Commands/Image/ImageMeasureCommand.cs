using System.CommandLine;
using System.Globalization;
using System.Text.Json.Serialization;
using XenDisk.Storage;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// `xendisk image measure [-O raw|qcow2] (--size SIZE | [-f FMT] IMAGE) [--json]`, as qemu-img measure:
/// the file size a new image needs ("required size": what convert would write) and the size it
/// reaches when every cluster is allocated ("fully allocated size"), for qcow2 with XenDisk's (and
/// qemu-img's) defaults: 64 KiB clusters, 16-bit refcounts, no extended L2 entries.
/// </summary>
internal static class ImageMeasureCommand
{
    private const long ClusterSize = 64 * 1024;
    private const int RefcountOrder = 4;
    private const long L2EntrySize = 8;
    private const long L1EntrySize = 8;
    private const long RefcountTableEntrySize = 8;

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
            if (!ImageFormats.TryParse(parse.GetValue(outputFormat), out ImageFormat kind) || kind == ImageFormat.Bitmap)
            {
                return CommandErrors.Invalid(parse, $"cannot measure for the format '{parse.GetValue(outputFormat)}' (use raw or qcow2)");
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
                dataBytes = kind == ImageFormat.Raw ? virtualSize : 0;
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
                // the file system's business); only qcow2 leaves out the clusters that read as zeros.
                dataBytes = kind == ImageFormat.Raw ? virtualSize : DataBytes(source, path!, ClusterSize, cancellationToken);
            }
            // qcow2_measure: the source's size rounded up to whole sectors.
            virtualSize = (virtualSize + 511) / 512 * 512;
            Measurement measurement = kind == ImageFormat.Qcow2
                ? new Measurement(PreallocatedSize(virtualSize) - virtualSize + dataBytes, PreallocatedSize(virtualSize))
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

    /// <summary>
    /// The file size of a fully allocated qcow2 image, computed as QEMU's qcow2_calc_prealloc_size
    /// does: one header cluster, L2 tables for every cluster (whole tables), the L1 table (whole
    /// clusters), the refcount structure covering all of that, and the data.
    /// </summary>
    private static long PreallocatedSize(long virtualSize)
    {
        long alignedSize = (virtualSize + ClusterSize - 1) / ClusterSize * ClusterSize;
        long metadata = ClusterSize;
        long l2Entries = RoundUp(alignedSize / ClusterSize, ClusterSize / L2EntrySize);
        metadata += l2Entries * L2EntrySize;
        long l1Entries = RoundUp(l2Entries * L2EntrySize / ClusterSize, ClusterSize / L1EntrySize);
        metadata += l1Entries * L1EntrySize;
        metadata += RefcountMetadataSize((metadata + alignedSize) / ClusterSize);
        return metadata + alignedSize;
    }

    /// <summary>qcow2_refcount_metadata_size: refcount blocks and table clusters for <paramref name="clusters"/>, themselves included (a fixed point).</summary>
    private static long RefcountMetadataSize(long clusters)
    {
        long blocksPerTableCluster = ClusterSize / RefcountTableEntrySize;
        long refcountsPerBlock = ClusterSize * 8 / (1 << RefcountOrder);
        long table = 0;
        long blocks = 0;
        long n = 0;
        long last;
        do
        {
            last = n;
            blocks = DivideRoundingUp(clusters + table + blocks, refcountsPerBlock);
            table = DivideRoundingUp(blocks, blocksPerTableCluster);
            n = clusters + blocks + table;
        }
        while (n != last);
        return (blocks + table) * ClusterSize;
    }

    private static long RoundUp(long value, long multiple) => DivideRoundingUp(value, multiple) * multiple;

    private static long DivideRoundingUp(long value, long divisor) => (value + divisor - 1) / divisor;
}
