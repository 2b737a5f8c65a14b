using Microsoft.Extensions.Logging;
using XenDisk.Cow.Policies;

namespace XenDisk.Cow.Qcow2;

/// <summary>How <see cref="Qcow2Image.Open"/> treats an overlay.</summary>
public sealed record Qcow2OpenOptions
{
    /// <summary>When metadata reaches the disk; see <see cref="MetadataPolicy"/>.</summary>
    public MetadataPolicy Policy { get; init; } = MetadataPolicy.Flush;

    /// <summary>Open read-only (also forced by a read-only overlay, the corrupt bit, version 2 or internal snapshots).</summary>
    public bool ReadOnly { get; init; }

    /// <summary>
    /// Bytes of L2 tables kept in memory; 0 sizes the cache from the disk: enough to map the whole
    /// virtual disk, capped at <see cref="DefaultMaximumL2CacheBytes"/>.
    /// </summary>
    public long L2CacheBytes { get; init; }

    /// <summary>Bytes of refcount blocks kept in memory; 0 means a quarter of the L2 cache (as QEMU), at least four blocks.</summary>
    public long RefcountCacheBytes { get; init; }

    /// <summary>Whether disposing the image disposes the overlay and backing devices too.</summary>
    public bool OwnsDevices { get; init; } = true;

    /// <summary>
    /// Open an image that names a backing file without a backing device: the unallocated ranges then
    /// read as zeros. Only for inspection tools; a guest must never see that.
    /// </summary>
    public bool AllowMissingBacking { get; init; }

    /// <summary>Which backing files <see cref="Qcow2Disk.Open"/> may follow.</summary>
    public BackingFilePolicy BackingPolicy { get; init; } = BackingFilePolicy.None;

    /// <summary>How a raw backing file named as an iSCSI LUN (iscsi://HOST[:PORT]/IQN/LUN) is reached; null refuses such a backing file.</summary>
    public XenDisk.Storage.Iscsi.IscsiOptions? Iscsi { get; init; }

    /// <summary>Where the image reports what it cannot say in an <c>IoStatus</c>: a corruption found, the image marked corrupt. Null: nowhere.</summary>
    public ILogger? Logger { get; init; }

    /// <summary>The longest backing chain <see cref="Qcow2Disk.Open"/> follows.</summary>
    public int MaximumChainDepth { get; init; } = DefaultMaximumChainDepth;

    /// <summary>A cache that maps a 2 TiB disk with 64 KiB clusters (QEMU's default cap is 32 MiB too).</summary>
    public const long DefaultMaximumL2CacheBytes = 32L * 1024 * 1024;

    /// <summary>Deep enough for golden image + a few layers; bounded because each level holds open files and caches.</summary>
    public const int DefaultMaximumChainDepth = 16;
}

/// <summary>What <see cref="Qcow2Image.Create"/> writes.</summary>
public sealed record Qcow2CreateOptions
{
    /// <summary>Virtual disk size in bytes (a multiple of 512).</summary>
    public required long VirtualSize { get; init; }

    /// <summary>A power of two from 512 B to 2 MiB; 64 KiB by default (QEMU's default).</summary>
    public int ClusterSize { get; init; } = 64 * 1024;

    /// <summary>Extended L2 entries (subclusters). Null: on when there is a backing file and clusters are at least 16 KiB.</summary>
    public bool? ExtendedL2 { get; init; }

    /// <summary>The backing file name stored in the header (never probed: give <see cref="BackingFormat"/> too).</summary>
    public string? BackingFile { get; init; }

    /// <summary>"raw" or "qcow2", stored in the backing format header extension.</summary>
    public string? BackingFormat { get; init; }

    /// <summary>Refcount width as a power of two of bits (0..6); 4 = 16-bit refcounts by default.</summary>
    public int RefcountOrder { get; init; } = 4;

    /// <summary>Sets the lazy refcounts compatible bit, for images meant to be used with <see cref="MetadataPolicy.Lazy"/>.</summary>
    public bool LazyRefcounts { get; init; }

    /// <summary>compression_type for compressed clusters: zlib (0, the default, readable by every qcow2 reader) or zstd (1, incompatible bit 3).</summary>
    public int CompressionType { get; init; } = CompressionZlib;

    public const int CompressionZlib = Qcow2Format.CompressionZlib;
    public const int CompressionZstd = Qcow2Format.CompressionZstd;
}
