using System.Globalization;
using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Storage;
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
    /// <summary>qcow2: the persistent dirty bitmaps, as qemu-img info lists them.</summary>
    public IReadOnlyList<BitmapEntry>? Bitmaps { get; init; }
    /// <summary>Bitmap: every grain is in the overlay (hydrated); the base is no longer read.</summary>
    public bool? Standalone { get; init; }
    /// <summary>Bitmap: the base's size when the overlay was made.</summary>
    public long? BaseSize { get; init; }

    private const long GiB = 1L << 30;

    /// <summary>Reads the image's header (and, for allocation, its tables or map) without opening it for I/O or following its backing file.</summary>
    public static ImageDescription Read(string path, ImageFormat format)
    {
        return format switch
        {
            ImageFormat.Qcow2 => ReadQcow2(path),
            ImageFormat.Bitmap => ReadBitmap(path),
            _ => ReadRaw(path),
        };
    }

    private static ImageDescription ReadQcow2(string path)
    {
        using IBlockDevice device = ImageFiles.OpenImage(path, readOnly: true);
        Qcow2Info info = Qcow2Image.Describe(device);
        string? fullBacking = null;
        if (info.BackingFile != null)
        {
            try
            {
                fullBacking = Qcow2Disk.ResolveBackingPath(path, info.BackingFile);
            }
            catch (StorageException)
            {
                // A protocol name (nbd:, json:) resolves to no file; the name itself is still shown.
            }
        }
        long clustersPerGiB = GiB / info.ClusterSize;
        // Qcow2 spec, == Cluster mapping ==: an L2 entry is 8 bytes, 16 with extended L2 entries;
        // every cluster of a GiB also has a refcount of refcount_bits.
        long metadataPerGiB = clustersPerGiB * (info.ExtendedL2 ? 16 : 8) + clustersPerGiB * info.RefcountBits / 8;
        return new ImageDescription
        {
            Filename = path,
            Format = "qcow2",
            VirtualSize = info.VirtualSize,
            FileSize = info.FileSize,
            ClusterSize = info.ClusterSize,
            BackingFile = info.BackingFile,
            BackingFormat = info.BackingFormat,
            FullBackingFilename = fullBacking,
            AllocatedBytes = info.AllocatedBytes,
            Features = info.Features,
            Dirty = info.Dirty,
            Corrupt = info.Corrupt,
            MetadataBytesPerGiB = metadataPerGiB,
            Version = info.Version,
            RefcountBits = info.RefcountBits,
            ExtendedL2 = info.ExtendedL2,
            LazyRefcounts = info.LazyRefcounts,
            Snapshots = info.SnapshotCount,
            Bitmaps = Qcow2Image.ReadBitmaps(device, Qcow2Disk.ReadHeader(device), withBits: false)
                .Select(b => new BitmapEntry(b.Name, b.Granularity, BitmapFlags(b))).ToList(),
        };
    }

    /// <summary>One persistent bitmap: qemu-img info's name, granularity and flags ("in-use", "auto").</summary>
    internal sealed record BitmapEntry(string Name, long Granularity, IReadOnlyList<string> Flags);

    private static List<string> BitmapFlags(PersistentBitmap bitmap)
    {
        List<string> flags = [];
        if (bitmap.Inconsistent) flags.Add("in-use");
        if (bitmap.Enabled) flags.Add("auto");
        return flags;
    }

    private static ImageDescription ReadBitmap(string path)
    {
        using IBlockDevice device = ImageFiles.OpenImage(path, readOnly: true);
        BitmapCheckReport report = BitmapChecker.Check(device, repair: false);
        BitmapHeader header = report.Header ?? throw new StorageException($"'{path}' is not a usable bitmap overlay: {string.Join("; ", report.Problems)}");
        List<string> features = [];
        if (header.IsDirty) features.Add("dirty");
        if (header.IsStandalone) features.Add("standalone");
        bool corrupt = (header.IncompatibleFeatures & BitmapFormat.IncompatibleCorrupt) != 0;
        if (corrupt) features.Add("corrupt");
        if ((header.IncompatibleFeatures & BitmapFormat.IncompatibleTransient) != 0) features.Add("transient");
        return new ImageDescription
        {
            Filename = path,
            Format = "bitmap",
            VirtualSize = header.VirtualSize,
            FileSize = device.Info.SizeBytes,
            GrainSize = header.GrainSize,
            BackingFile = header.BaseName.Length > 0 ? header.BaseName : null,
            BackingFormat = header.BaseName.Length > 0 ? "raw" : null,
            FullBackingFilename = header.BaseName.Length > 0 ? ImageFiles.FullName(header.BaseName) : null,
            AllocatedBytes = report.Counts.Mapped * header.GrainSize,
            Features = features,
            Dirty = header.IsDirty,
            Corrupt = corrupt,
            MetadataBytesPerGiB = BitmapFormat.MapBytesPerGiB(header.GrainSize),
            Version = (int)BitmapFormat.Version,
            Standalone = header.IsStandalone,
            BaseSize = header.BaseSize,
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
        if (Format == "qcow2")
        {
            output.WriteLine(Invariant($"    compat: {(Version >= 3 ? "1.1" : "0.10")}"));
            output.WriteLine(Invariant($"    refcount bits: {RefcountBits}"));
            output.WriteLine($"    extended l2: {TrueFalse(ExtendedL2 == true)}");
            output.WriteLine($"    lazy refcounts: {TrueFalse(LazyRefcounts == true)}");
            output.WriteLine(Invariant($"    internal snapshots: {Snapshots}"));
            if (Bitmaps is { Count: > 0 })
            {
                // qemu-img info's layout, so that what scripts grep for carries over.
                output.WriteLine("    bitmaps:");
                for (int i = 0; i < Bitmaps.Count; i++)
                {
                    output.WriteLine(Invariant($"        [{i}]:"));
                    output.WriteLine("            flags:");
                    for (int f = 0; f < Bitmaps[i].Flags.Count; f++)
                    {
                        output.WriteLine(Invariant($"                [{f}]: {Bitmaps[i].Flags[f]}"));
                    }
                    output.WriteLine($"            name: {Bitmaps[i].Name}");
                    output.WriteLine(Invariant($"            granularity: {Bitmaps[i].Granularity}"));
                }
            }
        }
        else
        {
            output.WriteLine(Invariant($"    version: {Version}"));
            output.WriteLine(Invariant($"    base size: {BaseSize}"));
            output.WriteLine($"    standalone: {TrueFalse(Standalone == true)}");
        }
    }

    private static string YesNo(bool value) => value ? "yes" : "no";

    private static string TrueFalse(bool value) => value ? "true" : "false";

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
}
