using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>What a qcow2 image is, for `info`-style tools.</summary>
public sealed record Qcow2Info
{
    public required long VirtualSize { get; init; }
    public required int ClusterSize { get; init; }
    public required int Version { get; init; }
    public string? BackingFile { get; init; }
    public string? BackingFormat { get; init; }
    public bool ExtendedL2 { get; init; }
    public int RefcountBits { get; init; }
    public bool Dirty { get; init; }
    public bool Corrupt { get; init; }
    public bool LazyRefcounts { get; init; }
    public int SnapshotCount { get; init; }
    /// <summary>Guest data clusters allocated in this image (not counting metadata), in bytes.</summary>
    public long AllocatedBytes { get; init; }
    /// <summary>The size of the image file.</summary>
    public long FileSize { get; init; }
    /// <summary>Format features by name: "extended_l2", "lazy_refcounts", "dirty", "corrupt", "bitmaps", ...</summary>
    public IReadOnlyList<string> Features { get; init; } = [];
}

/// <summary>Where a range of the virtual disk is served from.</summary>
public enum Qcow2ExtentKind
{
    /// <summary>Stored in this image at <see cref="Qcow2Extent.HostOffset"/>.</summary>
    Data,
    /// <summary>Reads as zeros (zero cluster or subcluster).</summary>
    Zero,
    /// <summary>Falls through to the backing image (zeros when there is none).</summary>
    Backing,
    /// <summary>An invalid entry: reads fail.</summary>
    Unsupported,
    /// <summary>A compressed cluster; <see cref="Qcow2Extent.HostOffset"/> is where its compressed data begins (not cluster aligned).</summary>
    Compressed,
}

/// <summary>One run of the virtual disk with the same source; Data runs are also contiguous in the file.</summary>
public readonly record struct Qcow2Extent(long Offset, long Length, Qcow2ExtentKind Kind, long HostOffset);

public sealed partial class Qcow2Image
{
    /// <summary>Describes the image file on <paramref name="device"/> without opening it for I/O. Throws <see cref="StorageException"/> for a refused image.</summary>
    public static Qcow2Info Describe(IBlockDevice device)
    {
        Qcow2Header header = Qcow2Disk.ReadHeader(device);
        ReferenceCounts references = ReferenceScanner.Scan(device, header, includeRefcountStructure: false);
        List<string> features = [];
        if (header.ExtendedL2) features.Add("extended_l2");
        if ((header.CompatibleFeatures & Qcow2Format.CompatibleLazyRefcounts) != 0) features.Add("lazy_refcounts");
        if (header.Dirty) features.Add("dirty");
        if (header.Corrupt) features.Add("corrupt");
        if ((header.IncompatibleFeatures & Qcow2Format.IncompatibleCompressionType) != 0) features.Add("compression_type");
        if ((header.AutoclearFeatures & Qcow2Format.AutoclearBitmaps) != 0) features.Add("bitmaps");
        return new Qcow2Info
        {
            VirtualSize = header.VirtualSize,
            ClusterSize = header.ClusterSize,
            Version = header.Version,
            BackingFile = header.BackingFile,
            BackingFormat = header.BackingFormat,
            ExtendedL2 = header.ExtendedL2,
            RefcountBits = header.RefcountBits,
            Dirty = header.Dirty,
            Corrupt = header.Corrupt,
            LazyRefcounts = (header.CompatibleFeatures & Qcow2Format.CompatibleLazyRefcounts) != 0,
            SnapshotCount = header.SnapshotCount,
            AllocatedBytes = (long)references.DataEntries.Count * header.ClusterSize,
            FileSize = device.Info.SizeBytes,
            Features = features,
        };
    }

    /// <summary>
    /// The allocation map of the virtual disk at allocation-unit granularity, merged into extents.
    /// <paramref name="progress"/> receives (bytes mapped, virtual size).
    /// </summary>
    public IReadOnlyList<Qcow2Extent> Map(Action<long, long>? progress = null)
    {
        List<Qcow2Extent> extents = [];
        void Add(long offset, long length, Qcow2ExtentKind kind, long host)
        {
            if (extents.Count > 0)
            {
                Qcow2Extent last = extents[^1];
                bool contiguous = last.Kind == kind && last.Offset + last.Length == offset
                    && (kind != Qcow2ExtentKind.Data || last.HostOffset + last.Length == host);
                if (contiguous)
                {
                    extents[^1] = last with { Length = last.Length + length };
                    return;
                }
            }
            extents.Add(new Qcow2Extent(offset, length, kind, kind == Qcow2ExtentKind.Data ? host : 0));
        }

        long clusters = (_virtualSize + _clusterSize - 1) >> _clusterBits;
        long tableSpan = 1L << _l2.IndexBits;
        for (long cluster = 0; cluster < clusters;)
        {
            L2Entry entry;
            bool tablePresent;
            lock (_metadataLock)
            {
                if (GetL2Table(cluster, allocate: false, out MetadataCache.Entry? table, out int index) != IoStatus.Ok)
                {
                    table = null;
                }
                tablePresent = table != null;
                entry = table != null ? _l2.Read(table, index) : default;
            }
            long clusterStart = cluster << _clusterBits;
            if (!tablePresent)
            {
                // No L2 table: the whole range it would map falls through.
                long next = Math.Min(clusters, (cluster / tableSpan + 1) * tableSpan);
                Add(clusterStart, Math.Min(_virtualSize, next << _clusterBits) - clusterStart, Qcow2ExtentKind.Backing, 0);
                cluster = next;
                progress?.Invoke(Math.Min(_virtualSize, cluster << _clusterBits), _virtualSize);
                continue;
            }
            int units = _extendedL2 ? Qcow2Format.SubclustersPerCluster : 1;
            for (int unit = 0; unit < units; unit++)
            {
                long start = clusterStart + ((long)unit << _unitBits);
                if (start >= _virtualSize)
                {
                    break;
                }
                long length = Math.Min(_unitSize, _virtualSize - start);
                if (entry.Compressed)
                {
                    // One extent per compressed cluster: each has its own place in the file.
                    long end = Math.Min(_virtualSize, clusterStart + _clusterSize);
                    extents.Add(new Qcow2Extent(clusterStart, end - clusterStart, Qcow2ExtentKind.Compressed, DecodeCompressed(entry).Offset));
                    break;
                }
                Qcow2ExtentKind kind = StateOf(entry, unit) switch
                {
                    UnitState.Data => Qcow2ExtentKind.Data,
                    UnitState.Zero => Qcow2ExtentKind.Zero,
                    UnitState.Unallocated => Qcow2ExtentKind.Backing,
                    _ => Qcow2ExtentKind.Unsupported,
                };
                Add(start, length, kind, entry.HostOffset + ((long)unit << _unitBits));
            }
            cluster++;
            if ((cluster & (tableSpan - 1)) == 0)
            {
                progress?.Invoke(Math.Min(_virtualSize, cluster << _clusterBits), _virtualSize);
            }
        }
        progress?.Invoke(_virtualSize, _virtualSize);
        return extents;
    }
}
