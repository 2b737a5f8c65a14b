using System.Globalization;
using XenDisk.Cow.Overlays;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>The file operations of tools (info, resize, snapshot, rebase, measure) on the qcow2 engine's public surface.</summary>
internal sealed partial class Qcow2OverlayFormat
{
    /// <summary>The cluster size of a new image with the defaults (qemu-img's too), which measure assumes.</summary>
    private const int DefaultClusterSize = 64 * 1024;

    private const long GiB = 1L << 30;

    // qcow2 spec, == Header ==, refcount_order: 4 (16-bit refcounts) by default; L1/L2 and refcount table entries are 8 bytes.
    private const long EntrySize = 8;

    public override int AllocationUnit => DefaultClusterSize;

    public override OverlayDescription Describe(IBlockDevice image, string imagePath)
    {
        Qcow2Info info = Qcow2Image.Describe(image);
        string? fullBacking = null;
        if (info.BackingFile != null)
        {
            try
            {
                fullBacking = Qcow2Disk.ResolveBackingPath(imagePath, info.BackingFile);
            }
            catch (StorageException)
            {
                // A protocol name (nbd:, json:) resolves to no file; the name itself is still shown.
            }
        }
        long clustersPerGiB = GiB / info.ClusterSize;
        // qcow2 spec, == Cluster mapping ==: an L2 entry is 8 bytes, 16 with extended L2 entries;
        // every cluster of a GiB also has a refcount of refcount_bits.
        long metadataPerGiB = clustersPerGiB * (info.ExtendedL2 ? 16 : 8) + clustersPerGiB * info.RefcountBits / 8;
        List<OverlayBitmapInfo> bitmaps = Qcow2Image.ReadBitmaps(image, Qcow2Disk.ReadHeader(image), withBits: false)
            .Select(b => new OverlayBitmapInfo(b.Name, b.Granularity, BitmapFlags(b))).ToList();
        return new OverlayDescription
        {
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
            Bitmaps = bitmaps,
            Details = Details(info, bitmaps),
        };
    }

    /// <summary>qemu-img info's "Format specific information" for qcow2, so that what scripts grep for carries over.</summary>
    private static List<string> Details(Qcow2Info info, List<OverlayBitmapInfo> bitmaps)
    {
        List<string> lines =
        [
            $"compat: {(info.Version >= 3 ? "1.1" : "0.10")}",
            Invariant($"refcount bits: {info.RefcountBits}"),
            $"extended l2: {TrueFalse(info.ExtendedL2)}",
            $"lazy refcounts: {TrueFalse(info.LazyRefcounts)}",
            Invariant($"internal snapshots: {info.SnapshotCount}"),
        ];
        if (bitmaps.Count > 0)
        {
            lines.Add("bitmaps:");
            for (int i = 0; i < bitmaps.Count; i++)
            {
                lines.Add(Invariant($"    [{i}]:"));
                lines.Add("        flags:");
                for (int f = 0; f < bitmaps[i].Flags.Count; f++)
                {
                    lines.Add(Invariant($"            [{f}]: {bitmaps[i].Flags[f]}"));
                }
                lines.Add($"        name: {bitmaps[i].Name}");
                lines.Add(Invariant($"        granularity: {bitmaps[i].Granularity}"));
            }
        }
        return lines;
    }

    private static List<string> BitmapFlags(PersistentBitmap bitmap)
    {
        List<string> flags = [];
        if (bitmap.Inconsistent) flags.Add("in-use");
        if (bitmap.Enabled) flags.Add("auto");
        return flags;
    }

    public override string? LunRefusal => "qcow2 images live in files; a LUN holds a raw disk or a bitmap overlay";

    /// <summary>The provider opens qcow2 targets itself, following the backing chain its policy allows.</summary>
    public override IBlockDevice OpenForIo(string path, bool readOnly, IDiskProvider provider, Func<string, bool, IBlockDevice> openStorage, string? policy = null) =>
        provider.Open(new DiskSpecification("qcow2:" + path + (policy != null ? ",policy=" + policy : ""), readOnly));

    public override string ResolveBasePath(string imagePath, string baseName) => Qcow2Disk.ResolveBackingPath(imagePath, baseName);

    /// <summary>qcow2 has every file operation.</summary>
    public override OverlayOperationResult? Refuses(OverlayFileOperation operation, string imagePath) => null;

    /// <summary>Grows in place (the L1 table with it); shrinking is refused, since the engine does not free clusters beyond a new end.</summary>
    public override OverlayOperationResult Resize(string imagePath, Func<long, long?> newSize, OverlayFileOptions? files = null)
    {
        files ??= new OverlayFileOptions();
        using Qcow2Image qcow2 = Qcow2Disk.Open(Path.GetFullPath(imagePath), new Qcow2OpenOptions { BackingPolicy = files.BackingPolicy });
        long current = qcow2.Info.SizeBytes;
        if (newSize(current) is not long size)
        {
            return new OverlayOperationResult { Status = IoStatus.Ok };
        }
        if (size < current)
        {
            return OverlayOperationResult.Unsupported("shrinking a qcow2 image is not supported (the engine does not free clusters beyond a new end); convert it and resize the raw copy");
        }
        if (size % 512 != 0)
        {
            return OverlayOperationResult.Invalid(Invariant($"the new size ({size} bytes) must be a multiple of 512"));
        }
        IoStatus status = qcow2.Resize(size);
        if (status == IoStatus.Ok)
        {
            status = qcow2.Close();
        }
        return status == IoStatus.Ok
            ? new OverlayOperationResult { Status = IoStatus.Ok, BytesExamined = size }
            : OverlayOperationResult.Failed(status, $"resizing '{imagePath}' failed: {qcow2.LastError ?? status.Describe()}");
    }

    public override OverlayOperationResult Snapshot(string imagePath, string newOverlayPath)
    {
        Qcow2Operations.Snapshot(imagePath, newOverlayPath);
        return new OverlayOperationResult { Status = IoStatus.Ok };
    }

    public override OverlayOperationResult Rebase(string imagePath, OverlayRebaseOptions options, OverlayFileOptions? files = null, CancellationToken cancellationToken = default)
    {
        bool remove = string.IsNullOrEmpty(options.NewBase);
        return Qcow2Operations.Rebase(imagePath, remove ? null : options.NewBase, remove ? null : options.NewBaseFormat,
            new Qcow2RebaseOptions { Unsafe = options.Unsafe, Progress = options.Progress },
            ToQcow2(files), cancellationToken);
    }

    /// <summary>
    /// The file size of a fully allocated qcow2 image with the default settings (64 KiB clusters,
    /// 16-bit refcounts, no extended L2 entries), computed as QEMU's qcow2_calc_prealloc_size does:
    /// one header cluster, L2 tables for every cluster (whole tables), the L1 table (whole clusters),
    /// the refcount structure covering all of that, and the data. An empty image needs all but the data.
    /// </summary>
    public override OverlaySizeEstimate Measure(long virtualSize, long dataBytes)
    {
        long full = PreallocatedSize(virtualSize);
        // qcow2_measure rounds the size up to whole clusters first: the metadata is what is not data.
        long alignedSize = (virtualSize + DefaultClusterSize - 1) / DefaultClusterSize * DefaultClusterSize;
        return new OverlaySizeEstimate(full - alignedSize + dataBytes, full);
    }

    private static long PreallocatedSize(long virtualSize)
    {
        const long clusterSize = DefaultClusterSize;
        long alignedSize = (virtualSize + clusterSize - 1) / clusterSize * clusterSize;
        long metadata = clusterSize;
        long l2Entries = RoundUp(alignedSize / clusterSize, clusterSize / EntrySize);
        metadata += l2Entries * EntrySize;
        long l1Entries = RoundUp(l2Entries * EntrySize / clusterSize, clusterSize / EntrySize);
        metadata += l1Entries * EntrySize;
        metadata += RefcountMetadataSize((metadata + alignedSize) / clusterSize);
        return metadata + alignedSize;
    }

    /// <summary>qcow2_refcount_metadata_size: refcount blocks and table clusters for <paramref name="clusters"/>, themselves included (a fixed point).</summary>
    private static long RefcountMetadataSize(long clusters)
    {
        const long clusterSize = DefaultClusterSize;
        long blocksPerTableCluster = clusterSize / EntrySize;
        long refcountsPerBlock = clusterSize * 8 / (1 << Qcow2Format.DefaultRefcountOrder);
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
        return (blocks + table) * clusterSize;
    }

    private static long RoundUp(long value, long multiple) => DivideRoundingUp(value, multiple) * multiple;

    private static long DivideRoundingUp(long value, long divisor) => (value + divisor - 1) / divisor;

    private static string TrueFalse(bool value) => value ? "true" : "false";

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
}
