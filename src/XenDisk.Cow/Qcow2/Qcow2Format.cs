namespace XenDisk.Cow.Qcow2;

/// <summary>
/// Numbers from QEMU's docs/interop/qcow2.txt (the format specification) and the implementation
/// limits QEMU applies, so that every image XenDisk accepts QEMU accepts too.
/// </summary>
internal static class Qcow2Format
{
    /// <summary>"QFI\xfb" (== Header ==, bytes 0-3).</summary>
    public const uint Magic = 0x514649FB;

    /// <summary>A version 2 header is exactly 72 bytes (== Header ==).</summary>
    public const int HeaderLengthV2 = 72;

    /// <summary>A version 3 header is at least 104 bytes, through header_length (== Header ==).</summary>
    public const int MinimumHeaderLengthV3 = 104;

    /// <summary>The header XenDisk writes: through compression_type (byte 104), padded to a multiple of 8 (=== Header padding ===).</summary>
    public const int HeaderLengthWritten = 112;

    /// <summary>cluster_bits must not be less than 9 (512-byte clusters).</summary>
    public const int MinimumClusterBits = 9;

    /// <summary>QEMU's implementation limit of 2 MiB clusters (cluster_bits note).</summary>
    public const int MaximumClusterBits = 21;

    /// <summary>Extended L2 entries need cluster_bits of at least 14 (cluster_bits note).</summary>
    public const int MinimumClusterBitsExtendedL2 = 14;

    /// <summary>Extended L2 entries divide a cluster into 32 subclusters (== Extended L2 Entries ==).</summary>
    public const int SubclustersPerCluster = 32;

    /// <summary>The backing file name "must not be longer than 1023 bytes" (backing_file_size).</summary>
    public const int MaximumBackingFileNameLength = 1023;

    /// <summary>QEMU's limit of 32 MiB for the L1 table (size note): 4 Mi entries.</summary>
    public const int MaximumL1Entries = 32 * 1024 * 1024 / 8;

    /// <summary>QEMU's limit of 8 MiB for the refcount table (== Host cluster management ==).</summary>
    public const long MaximumRefcountTableBytes = 8L * 1024 * 1024;

    /// <summary>QEMU's QCOW_MAX_SNAPSHOTS: at most 65536 internal snapshots.</summary>
    public const int MaximumSnapshots = 65536;

    /// <summary>QEMU's limit on a snapshot entry's extra data (QCOW_MAX_SNAPSHOT_EXTRA_DATA).</summary>
    public const int MaximumSnapshotExtraData = 1024;

    /// <summary>refcount_order "may not exceed 6" (64-bit refcounts).</summary>
    public const int MaximumRefcountOrder = 6;

    /// <summary>The refcount width XenDisk creates: 16 bits, QEMU's default.</summary>
    public const int DefaultRefcountOrder = 4;

    /// <summary>Virtual sizes beyond 2^61 cannot be addressed by any cluster size within QEMU's L1 limit (size note).</summary>
    public const long MaximumVirtualSize = 1L << 61;

    /// <summary>Host offsets are bits 9-55 (L1/L2 entry layouts): images are limited to 64 PiB.</summary>
    public const long MaximumHostOffset = 1L << 56;

    // incompatible_features (== Header ==, bytes 72-79)
    public const ulong IncompatibleDirty = 1UL << 0;
    public const ulong IncompatibleCorrupt = 1UL << 1;
    public const ulong IncompatibleExternalData = 1UL << 2;
    public const ulong IncompatibleCompressionType = 1UL << 3;
    public const ulong IncompatibleExtendedL2 = 1UL << 4;
    public const ulong IncompatibleKnown = IncompatibleDirty | IncompatibleCorrupt | IncompatibleExternalData
        | IncompatibleCompressionType | IncompatibleExtendedL2;

    // compatible_features (bytes 80-87)
    public const ulong CompatibleLazyRefcounts = 1UL << 0;

    // autoclear_features (bytes 88-95)
    public const ulong AutoclearBitmaps = 1UL << 0;
    public const ulong AutoclearRawExternalData = 1UL << 1;

    // Header extension types (=== Header extensions ===)
    public const uint ExtensionEnd = 0x00000000;
    public const uint ExtensionBackingFormat = 0xE2792ACA;
    public const uint ExtensionFeatureNameTable = 0x6803F857;
    public const uint ExtensionBitmaps = 0x23852875;
    public const uint ExtensionFullDiskEncryption = 0x0537BE77;
    public const uint ExtensionExternalDataFile = 0x44415441;

    /// <summary>The bitmaps extension's data: nb_bitmaps, reserved, bitmap_directory_size, bitmap_directory_offset (=== Bitmaps extension ===).</summary>
    public const int BitmapsExtensionLength = 24;

    /// <summary>QEMU's QCOW2_MAX_BITMAPS.</summary>
    public const int MaximumBitmaps = 65535;

    /// <summary>QEMU's QCOW2_MAX_BITMAP_DIRECTORY_SIZE: 1 KiB per bitmap.</summary>
    public const long MaximumBitmapDirectorySize = 1024L * MaximumBitmaps;

    /// <summary>compression_type values (byte 104 of the header).</summary>
    public const int CompressionZlib = 0;
    public const int CompressionZstd = 1;

    /// <summary>A feature name table entry: type, bit, 46 bytes of name (== Feature name table ==).</summary>
    public const int FeatureNameEntrySize = 48;

    // L1 and L2 entries (== Cluster mapping ==)
    /// <summary>Bit 63: the refcount is exactly one, so the cluster may be written in place.</summary>
    public const ulong OflagCopied = 1UL << 63;
    /// <summary>Bit 62 of an L2 entry: a compressed cluster.</summary>
    public const ulong OflagCompressed = 1UL << 62;
    /// <summary>Bit 0 of a standard cluster descriptor: the cluster reads as zeros (not with extended L2).</summary>
    public const ulong OflagZero = 1UL << 0;
    /// <summary>Bits 9-55: the host offset of an L2 table or data cluster.</summary>
    public const ulong OffsetMask = 0x00FF_FFFF_FFFF_FE00UL;
    /// <summary>L1 entry bits that must be zero: 0-8 and 56-62.</summary>
    public const ulong L1ReservedMask = 0x7F00_0000_0000_01FFUL;
    /// <summary>Standard L2 entry bits that must be zero: 1-8 and 56-61 (bit 0 is the zero flag).</summary>
    public const ulong L2ReservedMask = 0x3F00_0000_0000_01FEUL;
    /// <summary>Refcount table entry bits that must be zero: 0-8.</summary>
    public const ulong RefcountTableReservedMask = 0x1FFUL;

    /// <summary>Extended L2 bitmap: bits 0-31 say "allocated", bits 32-63 say "reads as zeros".</summary>
    public const ulong SubclusterAllocationMask = 0x0000_0000_FFFF_FFFFUL;

    /// <summary>The width in bytes of an L2 entry.</summary>
    public static int L2EntrySize(bool extendedL2) => extendedL2 ? 16 : 8;

    public static string DescribeIncompatibleBit(int bit) => bit switch
    {
        0 => "dirty",
        1 => "corrupt",
        2 => "external data file",
        3 => "compression type",
        4 => "extended L2 entries",
        _ => "unknown",
    };
}
