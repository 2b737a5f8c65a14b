using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Text.Json.Serialization;
using XenDisk.Cow.Overlays;
using XenDisk.Storage;

namespace XenDisk.Cli.Commands.Image;

/// <summary>What `image info` (and `image create`) report about an image, in text or JSON: the
/// format's description of the file (<see cref="OverlayDescription"/>) with its name and format.</summary>
internal sealed record ImageDescription : OverlayDescription
{
    public ImageDescription()
    {
    }

    [SetsRequiredMembers]
    private ImageDescription(OverlayDescription described, string filename, string format)
        : base(described)
    {
        Filename = filename;
        Format = format;
    }

    [JsonPropertyOrder(-2)]
    public required string Filename { get; init; }

    [JsonPropertyOrder(-1)]
    public required string Format { get; init; }

    /// <summary>Reads the image's header (and, for allocation, its tables or map) without opening it for I/O or following its backing file.</summary>
    public static ImageDescription Read(string path, ImageFormat format) =>
        ImageFormats.Overlay(format) is { } overlay ? ReadOverlay(path, overlay) : ReadRaw(path);

    private static ImageDescription ReadOverlay(string path, OverlayFormat format)
    {
        using IBlockDevice device = ImageFiles.OpenImage(path, readOnly: true);
        return new ImageDescription(format.Describe(device, path), path, format.Name);
    }

    private static ImageDescription ReadRaw(string path)
    {
        // Through the page cache and byte-exact, as qemu-img info reports a raw file: a 39-byte file is
        // 39 bytes (a sector device would round it down to none). A LUN's size is READ CAPACITY's.
        using IBlockDevice device = ImageFiles.OpenImage(path, readOnly: true);
        return new ImageDescription
        {
            Filename = path,
            Format = "raw",
            VirtualSize = device.Info.SizeBytes,
            FileSize = device.Info.SizeBytes,
        };
    }

    /// <summary>Text in qemu-img info's layout, with XenDisk's additions.</summary>
    public void WriteText(TextWriter output)
    {
        output.WriteLine($"image: {Filename}");
        output.WriteLine($"file format: {Format}");
        output.WriteLine(Invariant($"virtual size: {SizeText.Format(VirtualSize)} ({VirtualSize} bytes)"));
        output.WriteLine(Invariant($"file size: {SizeText.Format(FileSize)} ({FileSize} bytes)"));
        if (ClusterSize is int cluster)
        {
            output.WriteLine(Invariant($"cluster_size: {cluster}"));
        }
        if (GrainSize is int grain)
        {
            output.WriteLine(Invariant($"grain_size: {grain}"));
        }
        if (BackingFile != null)
        {
            output.WriteLine(FullBackingFilename != null && FullBackingFilename != BackingFile
                ? $"backing file: {BackingFile} (actual path: {FullBackingFilename})"
                : $"backing file: {BackingFile}");
            output.WriteLine($"backing file format: {BackingFormat ?? "(not recorded)"}");
        }
        if (AllocatedBytes is long allocated)
        {
            output.WriteLine(Invariant($"allocated: {SizeText.Format(allocated)} ({allocated} bytes of guest data in this image)"));
        }
        if (MetadataBytesPerGiB is long perGiB)
        {
            output.WriteLine($"metadata memory: {SizeText.Format(perGiB)} per GiB of virtual disk");
        }
        if (Format == "raw")
        {
            return;
        }
        output.WriteLine($"dirty: {YesNo(Dirty)}");
        output.WriteLine($"corrupt: {YesNo(Corrupt)}");
        output.WriteLine($"features: {(Features.Count == 0 ? "(none)" : string.Join(", ", Features))}");
        output.WriteLine("Format specific information:");
        foreach (string line in Details)
        {
            output.WriteLine("    " + line);
        }
    }

    private static string YesNo(bool value) => value ? "yes" : "no";

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
}
