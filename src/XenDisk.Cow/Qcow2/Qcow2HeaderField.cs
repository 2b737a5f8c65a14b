namespace XenDisk.Cow.Qcow2;

/// <summary>
/// Byte offsets of the header fields (qcow2 spec, == Header ==), named as the specification names
/// them. All fields are big-endian. Fields from <see cref="IncompatibleFeatures"/> on exist only in
/// version 3 headers (a version 2 header ends at byte 72).
/// </summary>
internal static class Qcow2HeaderField
{
    /// <summary>magic, 4 bytes: "QFI\xfb".</summary>
    public const int Magic = 0;

    /// <summary>version, 4 bytes: 2 or 3.</summary>
    public const int Version = 4;

    /// <summary>backing_file_offset, 8 bytes: where the backing file name starts, or 0.</summary>
    public const int BackingFileOffset = 8;

    /// <summary>backing_file_size, 4 bytes: the name's length in bytes.</summary>
    public const int BackingFileSize = 16;

    /// <summary>cluster_bits, 4 bytes.</summary>
    public const int ClusterBits = 20;

    /// <summary>size, 8 bytes: the virtual disk size in bytes.</summary>
    public const int Size = 24;

    /// <summary>crypt_method, 4 bytes.</summary>
    public const int CryptMethod = 32;

    /// <summary>l1_size, 4 bytes: entries in the active L1 table.</summary>
    public const int L1Size = 36;

    /// <summary>l1_table_offset, 8 bytes.</summary>
    public const int L1TableOffset = 40;

    /// <summary>refcount_table_offset, 8 bytes.</summary>
    public const int RefcountTableOffset = 48;

    /// <summary>refcount_table_clusters, 4 bytes.</summary>
    public const int RefcountTableClusters = 56;

    /// <summary>nb_snapshots, 4 bytes.</summary>
    public const int NbSnapshots = 60;

    /// <summary>snapshots_offset, 8 bytes.</summary>
    public const int SnapshotsOffset = 64;

    /// <summary>incompatible_features, 8 bytes (version 3).</summary>
    public const int IncompatibleFeatures = 72;

    /// <summary>compatible_features, 8 bytes (version 3).</summary>
    public const int CompatibleFeatures = 80;

    /// <summary>autoclear_features, 8 bytes (version 3).</summary>
    public const int AutoclearFeatures = 88;

    /// <summary>refcount_order, 4 bytes (version 3).</summary>
    public const int RefcountOrder = 96;

    /// <summary>header_length, 4 bytes (version 3).</summary>
    public const int HeaderLength = 100;

    /// <summary>compression_type, 1 byte (version 3, with header_length of at least 105).</summary>
    public const int CompressionType = 104;
}
