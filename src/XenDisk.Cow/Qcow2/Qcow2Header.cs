namespace XenDisk.Cow.Qcow2;

/// <summary>
/// A validated qcow2 header (== Header == of docs/interop/qcow2.txt) with its header extensions and
/// snapshot table. Every offset and size in it has been checked against the file size and against
/// the other metadata areas before anything was derived from it.
/// </summary>
public sealed record Qcow2Header
{
    public required int Version { get; init; }
    public required int ClusterBits { get; init; }
    public required long VirtualSize { get; init; }
    public required uint CryptMethod { get; init; }
    public required int L1Size { get; init; }
    public required long L1TableOffset { get; init; }
    public required long RefcountTableOffset { get; init; }
    public required int RefcountTableClusters { get; init; }
    public required int SnapshotCount { get; init; }
    public required long SnapshotsOffset { get; init; }
    public required ulong IncompatibleFeatures { get; init; }
    public required ulong CompatibleFeatures { get; init; }
    public required ulong AutoclearFeatures { get; init; }
    public required int RefcountOrder { get; init; }
    public required int HeaderLength { get; init; }
    public long BackingFileOffset { get; init; }
    public int BackingFileSize { get; init; }
    public string? BackingFile { get; init; }
    public string? BackingFormat { get; init; }

    /// <summary>The end of the header extension area (the position of the end marker's successor).</summary>
    public int ExtensionsEnd { get; init; }

    /// <summary>Names from the feature name table extension, keyed by (type, bit).</summary>
    public IReadOnlyDictionary<(int Type, int Bit), string> FeatureNames { get; init; } = new Dictionary<(int, int), string>();

    public IReadOnlyList<Qcow2Snapshot> Snapshots { get; init; } = [];

    /// <summary>The bitmaps extension (=== Bitmaps extension ===), or null when the image has none.</summary>
    public Qcow2BitmapsExtension? Bitmaps { get; init; }

    /// <summary>compression_type (byte 104): 0 zlib (deflate), 1 zstd; 0 when the header is too short to hold it.</summary>
    public int CompressionType { get; init; }

    /// <summary>Bytes the snapshot table occupies (0 without snapshots).</summary>
    public long SnapshotTableLength { get; init; }

    public int ClusterSize => 1 << ClusterBits;

    public bool ExtendedL2 => (IncompatibleFeatures & Qcow2Format.IncompatibleExtendedL2) != 0;

    public bool Dirty => (IncompatibleFeatures & Qcow2Format.IncompatibleDirty) != 0;

    public bool Corrupt => (IncompatibleFeatures & Qcow2Format.IncompatibleCorrupt) != 0;

    public int L2EntrySize => Qcow2Format.L2EntrySize(ExtendedL2);

    /// <summary>Entries per L2 table: cluster_size / 8, or / 16 with extended L2 entries.</summary>
    public int L2Entries => ClusterSize / L2EntrySize;

    public int RefcountBits => 1 << RefcountOrder;

    /// <summary>L1 entries needed to map <paramref name="virtualSize"/> bytes, computed without overflow.</summary>
    public static long L1EntriesFor(long virtualSize, int clusterBits, bool extendedL2)
    {
        long clusters = (virtualSize >> clusterBits) + ((virtualSize & ((1L << clusterBits) - 1)) != 0 ? 1 : 0);
        int l2Bits = clusterBits - (extendedL2 ? 4 : 3);
        return (clusters >> l2Bits) + ((clusters & ((1L << l2Bits) - 1)) != 0 ? 1 : 0);
    }
}

/// <summary>One entry of the snapshot table (== Snapshots ==), as far as XenDisk needs it.</summary>
public sealed record Qcow2Snapshot(string Id, string Name, long L1TableOffset, int L1Size, long VirtualSize);

/// <summary>The bitmaps header extension: how many bitmaps, and where their directory lies (=== Bitmaps extension ===).</summary>
public sealed record Qcow2BitmapsExtension(int Count, long DirectorySize, long DirectoryOffset);
