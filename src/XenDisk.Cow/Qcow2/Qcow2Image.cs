using System.Buffers.Binary;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>
/// A qcow2 (version 3) overlay as a block device: reads fall through unallocated clusters (or
/// subclusters, with extended L2 entries) to an optional backing device; writes allocate clusters in
/// the overlay and copy from the backing device only the part of a cluster or subcluster the write
/// does not cover. The format is QEMU's docs/interop/qcow2.txt; section names in comments refer to it.
/// <para>
/// Ownership: with <see cref="Qcow2OpenOptions.OwnsDevices"/> (the default) the image disposes the
/// overlay and backing devices. Buffers passed to I/O are borrowed for the call.
/// </para>
/// <para>
/// Concurrency: guest clusters are guarded by striped reader/writer locks (reads share, writes and
/// discards of a cluster are exclusive), so two writes into one unallocated cluster allocate it once
/// and a read never sees a half-done copy-up. All metadata (L1, L2 cache, refcounts, allocator) sits
/// behind one metadata lock that is held only for in-memory work and cache misses, never across data
/// I/O. Lock order: stripe, then write-back, then metadata.
/// </para>
/// <para>
/// Crash safety (see <see cref="MetadataPolicy"/>): dirty metadata is written back in phases
/// separated by flushes: data, refcount blocks, refcount table and header, L2 tables, L1 entries.
/// A freed cluster returns to the allocator only after the L2 entry that referenced it is gone on disk.
/// With Flush and Lazy, the mapping a request changed is also written into the file (not made
/// durable) before the request is answered, under the dirty bit (Qcow2Image.Publish.cs).
/// </para>
/// </summary>
public sealed partial class Qcow2Image : IRemappableBlockDevice, IGroupCommitDevice, ICopyOnWriteImage
{
    /// <summary>Enough stripes that unrelated clusters rarely share a lock, few enough to be cheap to hold.</summary>
    private const int StripeCount = 256;

    /// <summary>Copy-up buffers: two per request in flight (head and tail); more in flight wait (back-pressure).</summary>
    private const int ScratchBufferCount = 32;

    private readonly IBlockDevice _overlay;
    private readonly IBlockDevice? _backing;
    private readonly Qcow2OpenOptions _options;
    private readonly MetadataPolicy _policy;
    private readonly Qcow2Header _openedHeader;
    private readonly int _clusterBits;
    private readonly int _clusterSize;
    private readonly bool _extendedL2;
    private readonly int _unitBits;
    private readonly int _unitSize;
    private readonly int _metadataSector;
    private readonly ReaderWriterLockSlim[] _stripes;
    private readonly object _metadataLock = new();
    private readonly object _writeBackLock = new();
    private readonly AlignedBlock _header;
    private readonly AlignedBlock _zeros;
    private readonly AlignedBufferPool _scratch;
    private readonly L2TableCache _l2;
    private readonly RefcountAllocator _refcounts;
    private readonly OverlayStatistics _statistics;

    private L1Table _l1;
    private long _virtualSize;
    private ulong _incompatible;
    private ulong _compatible;
    private ulong _autoclear;
    private volatile string? _failure;
    private BlockDeviceInfo _info;
    private int _disposed;

    private Qcow2Image(IBlockDevice overlay, IBlockDevice? backing, Qcow2Header header, AlignedBlock headerCluster, Qcow2OpenOptions options, bool readOnly, string? readOnlyReason)
    {
        _overlay = overlay;
        _backing = backing;
        _options = options;
        _policy = options.Policy;
        _openedHeader = header;
        _header = headerCluster;
        _clusterBits = header.ClusterBits;
        _clusterSize = header.ClusterSize;
        _extendedL2 = header.ExtendedL2;
        _unitBits = _extendedL2 ? _clusterBits - 5 : _clusterBits;
        _unitSize = 1 << _unitBits;
        _metadataSector = Math.Max(512, overlay.Info.LogicalSectorSize);
        _virtualSize = header.VirtualSize;
        _incompatible = header.IncompatibleFeatures;
        _compatible = header.CompatibleFeatures;
        _autoclear = header.AutoclearFeatures;
        ReadOnly = readOnly;
        ReadOnlyReason = readOnlyReason;
        _stripes = new ReaderWriterLockSlim[StripeCount];
        for (int i = 0; i < _stripes.Length; i++)
        {
            _stripes[i] = new ReaderWriterLockSlim(LockRecursionPolicy.NoRecursion);
        }
        _zeros = new AlignedBlock(_clusterSize);
        _scratch = new AlignedBufferPool(Math.Max(_clusterSize, AlignedBufferPool.PageSize), ScratchBufferCount);

        long l2Budget = options.L2CacheBytes;
        if (l2Budget <= 0)
        {
            // Sized from the disk: every L2 table of the virtual disk, capped.
            long tables = Math.Max(1, Qcow2Header.L1EntriesFor(_virtualSize, _clusterBits, _extendedL2));
            l2Budget = Math.Min(tables * _clusterSize, Qcow2OpenOptions.DefaultMaximumL2CacheBytes);
        }
        long refcountBudget = options.RefcountCacheBytes > 0 ? options.RefcountCacheBytes : Math.Max(l2Budget / 4, 4L * _clusterSize);

        _l1 = new L1Table(header.L1Size, header.L1TableOffset, RoundUpToSector((long)header.L1Size * 8), _metadataSector);
        _info = MakeInfo();
        _statistics = new OverlayStatistics(() => FileBytes, () => BackingFile == null);
        _l2 = new L2TableCache(overlay, header, l2Budget, _statistics, trackUnwritten: PublishesMetadata);
        _durableFileBytes = overlay.Info.SizeBytes;
        _refcounts = new RefcountAllocator(overlay, header, _metadataSector, refcountBudget, _metadata, _statistics, Corrupt, RefuseRequest, ProveFreeClustersUnreferenced);
    }

    /// <summary>The clusters up to the end of the file, as the allocator knows it.</summary>
    private long FileBytes => _refcounts.EndCluster << _clusterBits;

    /// <summary>Size and capabilities as the guest sees them: the virtual disk.</summary>
    public BlockDeviceInfo Info => Volatile.Read(ref _info);

    /// <summary>True when both the overlay and the backing device complete inline (memory).</summary>
    public bool CompletesInline => _overlay.CompletesInline && (_backing?.CompletesInline ?? true);

    public bool ReadOnly { get; }

    /// <summary>Why the image was opened read-only although the caller did not ask for it (corrupt bit, version 2, snapshots), or null.</summary>
    public string? ReadOnlyReason { get; }

    public MetadataPolicy Policy => _policy;

    public int ClusterSize => _clusterSize;

    /// <summary>The allocation unit of writes: a subcluster (cluster / 32) with extended L2 entries, else a cluster.</summary>
    public int AllocationUnit => _unitSize;

    public bool ExtendedL2 => _extendedL2;

    public bool HasBacking => _backing != null;

    /// <summary>The header as it was when the image was opened.</summary>
    public Qcow2Header OpenedHeader => _openedHeader;

    /// <summary>Why the image stopped accepting writes (a metadata write failed), or null.</summary>
    public string? Failure => _failure;

    /// <summary>The overlay file's path (or its device's description).</summary>
    public string ImageName => OverlayStatistics.NameOf(_overlay);

    /// <summary>Copy-ups, metadata writes and flushes, cache lookups; the allocated bytes are the clusters up to the end of the file.</summary>
    public OverlayStatistics Statistics => _statistics;

    /// <summary>Bytes of memory held for mapping metadata: the L1 table, cached L2 tables and refcount blocks, and the refcount table.</summary>
    public long MetadataMemoryBytes
    {
        get
        {
            lock (_metadataLock)
            {
                return _l1.MemoryBytes + _l2.BytesInUse + _refcounts.MemoryBytes;
            }
        }
    }

    /// <summary>Mapping metadata memory per GiB of virtual disk (the cache budget is sized from the disk).</summary>
    public double MetadataBytesPerGiB => _virtualSize == 0 ? 0 : MetadataMemoryBytes / (_virtualSize / (double)(1L << 30));

    /// <summary>How many L2 tables the cache may hold before it writes back.</summary>
    public int L2CacheCapacity => _l2.Capacity;

    /// <summary>
    /// Opens a qcow2 overlay. <paramref name="backing"/> is the already opened base (resolving and
    /// authorising the backing file name is the caller's job; <see cref="Qcow2Disk.Open"/> does it for files).
    /// Throws <see cref="StorageException"/> with an operator-readable message when the image is refused.
    /// </summary>
    public static Qcow2Image Open(IBlockDevice overlay, IBlockDevice? backing, Qcow2OpenOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(overlay);
        options ??= new Qcow2OpenOptions();
        Qcow2Header header = Qcow2HeaderReader.Read(overlay, out AlignedBlock headerCluster);
        Qcow2Image? image = null;
        try
        {
            if (header.BackingFile != null && backing == null && !options.AllowMissingBacking)
            {
                throw Qcow2HeaderReader.Refuse($"the image has the backing file '{header.BackingFile}' but no backing device was opened for it");
            }
            if (header.ClusterSize < Math.Max(512, overlay.Info.LogicalSectorSize))
            {
                throw Qcow2HeaderReader.Refuse($"clusters of {header.ClusterSize} bytes are smaller than the storage's {overlay.Info.LogicalSectorSize}-byte sectors");
            }
            string? reason = null;
            if (!options.ReadOnly)
            {
                if (overlay.Info.ReadOnly)
                {
                    reason = "the overlay storage is read-only";
                }
                else if (header.Corrupt)
                {
                    reason = "the corrupt bit is set (incompatible bit 1): repair the image with a checker before writing";
                }
                else if (header.Version < 3)
                {
                    reason = "qcow2 version 2 images are opened read-only (no zero clusters); upgrade with 'qemu-img amend -o compat=1.1'";
                }
                else if (header.SnapshotCount > 0)
                {
                    reason = "the image has internal snapshots, which are opened read-only";
                }
            }
            bool readOnly = options.ReadOnly || reason != null;
            image = new Qcow2Image(overlay, backing, header, headerCluster, options, readOnly, reason);
            image.LoadTables();
            if (!readOnly)
            {
                image.PrepareForWriting();
            }
            image.BuildMetadataMap();
            if (!readOnly && options.Policy != MetadataPolicy.Transient)
            {
                image.LoadBitmapsForWriting();
            }
            return image;
        }
        catch
        {
            if (image != null)
            {
                image.DisposeCore(writeBack: false, disposeDevices: false);
            }
            else
            {
                headerCluster.Dispose();
            }
            throw;
        }
    }

    private void LoadTables()
    {
        if (_l1.Size > 0)
        {
            IoBuffer l1 = _l1.Block.AsIoBuffer(0, RoundUpToSector((long)_l1.Size * 8));
            ThrowIfFailed(ReadMetadata(_l1.Offset, _l1.Block, l1.Length), "reading the L1 table");
            _l1.ClearTail();
        }
        ThrowIfFailed(_refcounts.Load(), "reading the refcount table");
    }

    private IoStatus ReadMetadata(long offset, AlignedBlock block, int length)
    {
        if (length == block.Length)
        {
            return DeviceIo.ReadClamped(_overlay, offset, block);
        }
        using AlignedBlock temporary = new(length);
        IoStatus status = DeviceIo.ReadClamped(_overlay, offset, temporary);
        temporary.Span.CopyTo(block.Span);
        return status;
    }

    /// <summary>Before the first write: repair a dirty image, clear autoclear bits we do not maintain, set the dirty bit for lazy refcounts.</summary>
    private void PrepareForWriting()
    {
        if ((_incompatible & Qcow2Format.IncompatibleDirty) != 0)
        {
            // == Header ==, incompatible bit 0: refcounts may be inconsistent; rebuild them from the L1/L2 tables.
            ThrowIfFailed(RebuildRefcounts(), "rebuilding refcounts of a dirty image");
            _incompatible &= ~Qcow2Format.IncompatibleDirty;
            ThrowIfFailed(WriteHeaderNow(), "clearing the dirty bit");
        }
        // autoclear_features: "An implementation may only write to an image with unknown
        // auto-clear features if it clears the respective bits from this field first." XenDisk
        // maintains the bitmaps (bit 0, see Qcow2Image.Bitmaps.cs) when the extension is there,
        // except in a transient overlay, which never stores them; every other bit is cleared.
        ulong keep = _openedHeader.Bitmaps != null && _policy != MetadataPolicy.Transient ? Qcow2Format.AutoclearBitmaps : 0;
        if ((_autoclear & ~keep) != 0)
        {
            _autoclear &= keep;
            ThrowIfFailed(WriteHeaderNow(), "clearing autoclear feature bits");
        }
        if (_policy == MetadataPolicy.Lazy)
        {
            _incompatible |= Qcow2Format.IncompatibleDirty;
            ThrowIfFailed(WriteHeaderNow(), "setting the dirty bit for lazy refcounts");
        }
    }

    /// <summary>Updates the header fields XenDisk changes and writes the header sector, then flushes.</summary>
    private IoStatus WriteHeaderNow()
    {
        lock (_metadataLock)
        {
            UpdateHeaderFields();
        }
        IoStatus status = DeviceIo.Write(_overlay, 0, _header, 0, HeaderWriteLength);
        _statistics.CountMetadataWrites(1);
        if (status != IoStatus.Ok)
        {
            return status;
        }
        _statistics.CountMetadataFlush();
        return _overlay.Flush();
    }

    /// <summary>Every header field XenDisk changes lies within the first 104 bytes, inside the first sector.</summary>
    private int HeaderWriteLength => Math.Min(_clusterSize, _metadataSector);

    private void UpdateHeaderFields()
    {
        Span<byte> h = _header.Span;
        BinaryPrimitives.WriteUInt64BigEndian(h[Qcow2HeaderField.Size..], (ulong)_virtualSize);
        BinaryPrimitives.WriteUInt32BigEndian(h[Qcow2HeaderField.L1Size..], (uint)_l1.Size);
        BinaryPrimitives.WriteUInt64BigEndian(h[Qcow2HeaderField.L1TableOffset..], (ulong)_l1.Offset);
        BinaryPrimitives.WriteUInt64BigEndian(h[Qcow2HeaderField.RefcountTableOffset..], (ulong)_refcounts.TableOffset);
        BinaryPrimitives.WriteUInt32BigEndian(h[Qcow2HeaderField.RefcountTableClusters..], (uint)_refcounts.TableClusters);
        if (_openedHeader.Version >= 3)
        {
            BinaryPrimitives.WriteUInt64BigEndian(h[Qcow2HeaderField.IncompatibleFeatures..], _incompatible);
            BinaryPrimitives.WriteUInt64BigEndian(h[Qcow2HeaderField.CompatibleFeatures..], _compatible);
            BinaryPrimitives.WriteUInt64BigEndian(h[Qcow2HeaderField.AutoclearFeatures..], _autoclear);
        }
    }

    public BlockDeviceInfo Refresh() => Info;

    private BlockDeviceInfo MakeInfo() => new()
    {
        SizeBytes = _virtualSize,
        LogicalSectorSize = Math.Max(512, Math.Max(_overlay.Info.LogicalSectorSize, _backing?.Info.LogicalSectorSize ?? 512)),
        PhysicalSectorSize = Math.Max(512, Math.Max(_overlay.Info.PhysicalSectorSize, _backing?.Info.PhysicalSectorSize ?? 512)),
        ReadOnly = ReadOnly,
        SupportsDiscard = !ReadOnly,
        SupportsSecureDiscard = false,
        DiscardZeroes = true,
        DiscardGranularity = _unitSize,
        DiscardAlignment = 0,
        HasVolatileCache = _policy != MetadataPolicy.Sync,
        Description = $"qcow2 overlay ({_clusterSize / 1024.0:0.#} KiB clusters{(_extendedL2 ? ", subclusters" : "")}, {_policy} metadata) on {_overlay.Info.Description}"
            + (_backing != null ? $" over {_backing.Info.Description}" : ""),
    };

    /// <summary>
    /// Grows the virtual disk. The L1 table grows with it at once (QEMU refuses an image whose L1
    /// table is too small for its size): the new table is written and flushed before the header points to it.
    /// Shrinking is not supported.
    /// </summary>
    public IoStatus Resize(long newVirtualSize)
    {
        if (ReadOnly)
        {
            return IoStatus.ReadOnly;
        }
        if (newVirtualSize < _virtualSize || newVirtualSize % 512 != 0 || newVirtualSize > Qcow2Format.MaximumVirtualSize)
        {
            return IoStatus.NotSupported;
        }
        if (Bitmaps.Count > 0)
        {
            // As QEMU 7.2 (qcow2_co_truncate): a bitmap covers the old size and would have to be resized with the disk.
            return RefuseRequest("cannot resize an image with persistent bitmaps; remove them first ('image bitmap --remove')");
        }
        lock (_writeBackLock)
        {
            IoStatus status = WriteBackCore(forGuestFlush: true, forceRefcounts: true);
            if (status != IoStatus.Ok)
            {
                return status;
            }
            long needed = Qcow2Header.L1EntriesFor(newVirtualSize, _clusterBits, _extendedL2);
            if (needed > Qcow2Format.MaximumL1Entries)
            {
                return IoStatus.NotSupported;
            }
            if (needed > _l1.Size)
            {
                L1Table newL1;
                long oldOffset = _l1.Offset;
                int oldClusters = ClustersFor((long)_l1.Size * 8);
                long newOffset;
                int newClusters = ClustersFor(needed * 8);
                lock (_metadataLock)
                {
                    status = _refcounts.AllocateContiguous(newClusters, out long first);
                    if (status != IoStatus.Ok)
                    {
                        return status;
                    }
                    newOffset = first << _clusterBits;
                    _metadata.Add(first, newClusters, MetadataKind.L1Table);
                    newL1 = new L1Table((int)needed, newOffset, newClusters << _clusterBits, _metadataSector);
                    _l1.CopyTo(newL1.Block);
                }
                // New L1 and the refcounts of its clusters are durable before the header points to it.
                status = WriteBackCore(forGuestFlush: false, forceRefcounts: true);
                if (status == IoStatus.Ok)
                {
                    lock (_metadataLock)
                    {
                        status = CheckOverlap(newOffset, newL1.Block.Length, MetadataKind.L1Table, "the grown L1 table");
                    }
                    if (status != IoStatus.Ok)
                    {
                        newL1.Dispose();
                        PersistCorruptBit();
                        return status;
                    }
                    status = DeviceIo.Write(_overlay, newOffset, newL1.Block, 0, newL1.Block.Length);
                    _statistics.CountMetadataWrites(1);
                }
                if (status == IoStatus.Ok)
                {
                    status = _overlay.Flush();
                    _statistics.CountMetadataFlush();
                }
                if (status != IoStatus.Ok)
                {
                    newL1.Dispose();
                    return Fail(status, "growing the L1 table");
                }
                lock (_metadataLock)
                {
                    L1Table old = _l1;
                    _l1 = newL1;
                    old.Dispose();
                    _virtualSize = newVirtualSize;
                }
                status = WriteHeaderNow();
                if (status != IoStatus.Ok)
                {
                    return Fail(status, "writing the header for the grown L1 table");
                }
                lock (_metadataLock)
                {
                    if (oldClusters > 0 && oldOffset != 0)
                    {
                        // The header no longer points to the old table: it is an ordinary cluster again once freed.
                        _metadata.Remove(oldOffset >> _clusterBits, oldClusters, MetadataKind.L1Table);
                        for (int i = 0; i < oldClusters; i++)
                        {
                            _refcounts.FreeAfterWriteBack(oldOffset + ((long)i << _clusterBits));
                        }
                    }
                }
            }
            else
            {
                lock (_metadataLock)
                {
                    _virtualSize = newVirtualSize;
                }
                status = WriteHeaderNow();
                if (status != IoStatus.Ok)
                {
                    return Fail(status, "writing the header for the new size");
                }
            }
            Volatile.Write(ref _info, MakeInfo());
            return IoStatus.Ok;
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        if (!ReadOnly && _policy != MetadataPolicy.Transient)
        {
            PersistCorruptBitIfPending();
        }
        DisposeCore(writeBack: !ReadOnly && _policy != MetadataPolicy.Transient && _failure == null, disposeDevices: _options.OwnsDevices);
    }

    /// <summary>
    /// Closes the image cleanly: writes back all metadata, refcounts included, and clears the dirty
    /// bit. Returns the outcome, which <see cref="Dispose"/> cannot.
    /// </summary>
    public IoStatus Close()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return IoStatus.Ok;
        }
        IoStatus status = IoStatus.Ok;
        if (!ReadOnly && _policy != MetadataPolicy.Transient)
        {
            // A failed image writes nothing back (memory and disk may disagree), so its metadata did
            // not reach the disk: that is the outcome to report, not success.
            if (_failure == null)
            {
                status = CloseMetadata();
            }
            else
            {
                lock (_writeBackLock)
                {
                    PersistCorruptBit();
                }
                status = IoStatus.IoError;
            }
        }
        DisposeCore(writeBack: false, disposeDevices: _options.OwnsDevices);
        return status;
    }

    private IoStatus CloseMetadata()
    {
        lock (_writeBackLock)
        {
            IoStatus status = WriteBackCore(forGuestFlush: true, forceRefcounts: true);
            if (status == IoStatus.Ok)
            {
                status = StoreBitmaps();
            }
            // Frees applied by a pass dirty refcount blocks again; two more passes write them all
            // (the second frees the clusters of stored bitmaps, the third writes those refcounts).
            for (int pass = 0; pass < 2 && status == IoStatus.Ok; pass++)
            {
                status = WriteBackCore(forGuestFlush: true, forceRefcounts: true);
            }
            if (status == IoStatus.Ok && ((_incompatible & Qcow2Format.IncompatibleDirty) != 0 || _compatible != _openedHeader.CompatibleFeatures))
            {
                _incompatible &= ~Qcow2Format.IncompatibleDirty;
                status = WriteHeaderNow();
            }
            if (status == IoStatus.Ok && _downgradeOnClose)
            {
                status = WriteVersion2Header();
            }
            return status;
        }
    }

    private void DisposeCore(bool writeBack, bool disposeDevices)
    {
        if (writeBack)
        {
            CloseMetadata();
        }
        _l2.Dispose();
        _refcounts.Dispose();
        _l1.Dispose();
        _header.Dispose();
        _zeros.Dispose();
        _scratch.Dispose();
        while (_writeBackSpares.TryPop(out AlignedBlock? spare))
        {
            spare.Dispose();
        }
        foreach (ReaderWriterLockSlim stripe in _stripes)
        {
            stripe.Dispose();
        }
        if (disposeDevices)
        {
            _overlay.Dispose();
            _backing?.Dispose();
        }
        _statistics.MarkClosed();
    }

    /// <summary>Records a metadata failure: from now on writes fail, because memory and disk may disagree.</summary>
    private IoStatus Fail(IoStatus status, string what)
    {
        _failure ??= $"{what} failed with {status.Describe()}";
        _lastError = _failure;
        return status == IoStatus.Ok ? IoStatus.IoError : status;
    }

    private static void ThrowIfFailed(IoStatus status, string what)
    {
        if (status != IoStatus.Ok)
        {
            throw new StorageException($"qcow2: {what} failed ({status.Describe()})");
        }
    }

    private int RoundUpToSector(long bytes) => (int)((bytes + _metadataSector - 1) / _metadataSector * _metadataSector);

    private int ClustersFor(long bytes) => (int)((bytes + _clusterSize - 1) >> _clusterBits);

    private ReaderWriterLockSlim StripeFor(long guestCluster) => _stripes[(int)((ulong)guestCluster % StripeCount)];
}
