using System.Globalization;
using System.Text.Json.Serialization;
using XenDisk.Cow.Overlays;
using XenDisk.Storage;

namespace XenDisk.Cli.Commands.Image;

/// <summary>What `image info` (and `image create`) report about an image, in text or JSON.</summary>
internal sealed record ImageDescription
{
    public required string Filename { get; init; }
    public required string Format { get; init; }
    public required long VirtualSize { get; init; }
    /// <summary>The image file's length (sparse files take less on disk).</summary>
    public required long FileSize { get; init; }
    public int? ClusterSize { get; init; }
    public int? GrainSize { get; init; }
    public string? BackingFile { get; init; }
    public string? BackingFormat { get; init; }
    /// <summary>Where <see cref="BackingFile"/> resolves to (relative names are relative to the image's directory).</summary>
    public string? FullBackingFilename { get; init; }
    /// <summary>Guest data held in this image (qcow2: data clusters; bitmap: mapped grains).</summary>
    public long? AllocatedBytes { get; init; }
    public IReadOnlyList<string> Features { get; init; } = [];
    public bool Dirty { get; init; }
    public bool Corrupt { get; init; }
    /// <summary>Memory the engine needs to keep all of one GiB's mapping metadata cached.</summary>
    public long? MetadataBytesPerGiB { get; init; }
    public int? Version { get; init; }
    public int? RefcountBits { get; init; }
    public bool? ExtendedL2 { get; init; }
    public bool? LazyRefcounts { get; init; }
    public int? Snapshots { get; init; }
    /// <summary>The persistent dirty bitmaps, as qemu-img info lists them, where the format has them.</summary>
    public IReadOnlyList<OverlayBitmapInfo>? Bitmaps { get; init; }
    /// <summary>Every unit is in the overlay (hydrated); the base is no longer read, where the format records it.</summary>
    public bool? Standalone { get; init; }
    /// <summary>The base's size when the overlay was made, where the format records it.</summary>
    public long? BaseSize { get; init; }

    /// <summary>The format's own lines under "Format specific information:" (the JSON has the same facts as fields).</summary>
    [JsonIgnore]
    public IReadOnlyList<string> Details { get; init; } = [];

    /// <summary>Reads the image's header (and, for allocation, its tables or map) without opening it for I/O or following its backing file.</summary>
    public static ImageDescription Read(string path, ImageFormat format) =>
        ImageFormats.Overlay(format) is { } overlay ? ReadOverlay(path, overlay) : ReadRaw(path);

    private static ImageDescription ReadOverlay(string path, OverlayFormat format)
    {
        using IBlockDevice device = ImageFiles.OpenImage(path, readOnly: true);
        OverlayDescription d = format.Describe(device, path);
        return new ImageDescription
        {
            Filename = path,
            Format = format.Name,
            VirtualSize = d.VirtualSize,
            FileSize = d.FileSize,
            ClusterSize = d.ClusterSize,
            GrainSize = d.GrainSize,
            BackingFile = d.BackingFile,
            BackingFormat = d.BackingFormat,
            FullBackingFilename = d.FullBackingFilename,
            AllocatedBytes = d.AllocatedBytes,
            Features = d.Features,
            Dirty = d.Dirty,
            Corrupt = d.Corrupt,
            MetadataBytesPerGiB = d.MetadataBytesPerGiB,
            Version = d.Version,
            RefcountBits = d.RefcountBits,
            ExtendedL2 = d.ExtendedL2,
            LazyRefcounts = d.LazyRefcounts,
            Snapshots = d.Snapshots,
            Bitmaps = d.Bitmaps,
            Standalone = d.Standalone,
            BaseSize = d.BaseSize,
            Details = d.Details,
        };
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
