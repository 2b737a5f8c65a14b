using System.Buffers.Binary;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>
/// The refcount structure of an open qcow2 image and the cluster allocator built on it (qcow2 spec,
/// == Host cluster management ==): the refcount table in memory with its dirty sectors, a cache of
/// refcount blocks, where the file ends, the lowest cluster that may be free, and the clusters whose
/// references are gone in memory but not yet on disk.
/// <para>
/// Every cluster it hands out is checked against <see cref="MetadataClusters"/> (a refcount of 0 on a
/// live table is corruption, not free space). Freed clusters are only queued
/// (<see cref="FreeAfterWriteBack"/>): the write-back pass takes them and applies them once the
/// entries that referenced them are gone on disk.
/// </para>
/// <para>
/// Not thread-safe: the image's metadata lock guards every call. Ownership: the allocator owns the
/// refcount table's buffer and the block cache and releases them in <see cref="Dispose"/>; the
/// device, the metadata map and the statistics are borrowed from the image.
/// </para>
/// </summary>
internal sealed class RefcountAllocator : IDisposable
{
    private readonly IBlockDevice _device;
    private readonly MetadataClusters _metadata;
    private readonly OverlayStatistics _statistics;
    private readonly Func<string, IoStatus> _corrupt;
    private readonly Func<string, IoStatus> _refuse;
    private readonly Func<IoStatus> _proveHolesUnreferenced;
    private readonly int _clusterBits;
    private readonly int _clusterSize;
    private readonly int _refcountOrder;
    private readonly int _refBlockBits;
    private readonly int _metadataSector;
    private readonly MetadataCache _cache;
    private readonly List<long> _pendingFrees = [];
    private readonly List<(long Offset, int Clusters)> _retiredTables = [];

    private AlignedBlock _table;
    private long _tableOffset;
    private int _tableClusters;
    private DirtySectors _tableDirty;
    private bool _tableMoved;
    private long _endCluster;
    private long _freeHint;
    private bool _holesProven;

    /// <param name="device">The image file (borrowed).</param>
    /// <param name="header">Supplies cluster_bits, refcount_order, refcount_table_offset and refcount_table_clusters.</param>
    /// <param name="metadataSector">The unit in which the table is written back.</param>
    /// <param name="cacheBytes">The refcount block cache's budget.</param>
    /// <param name="metadata">Where metadata lives (borrowed, kept current by the image and by this allocator).</param>
    /// <param name="corrupt">Records an inconsistency of the image (fails the request and marks the image corrupt).</param>
    /// <param name="refuse">Fails one request the engine cannot carry out, leaving the image usable.</param>
    /// <param name="proveHolesUnreferenced">
    /// Checks, once, that no guest data lies in a cluster whose refcount is 0 (the mapping knows what
    /// it references; the allocator knows only counts). Run before the first hole is handed out.
    /// </param>
    public RefcountAllocator(IBlockDevice device, Qcow2Header header, int metadataSector, long cacheBytes, MetadataClusters metadata,
        OverlayStatistics statistics, Func<string, IoStatus> corrupt, Func<string, IoStatus> refuse, Func<IoStatus> proveHolesUnreferenced)
    {
        _device = device;
        _metadata = metadata;
        _statistics = statistics;
        _corrupt = corrupt;
        _refuse = refuse;
        _proveHolesUnreferenced = proveHolesUnreferenced;
        _clusterBits = header.ClusterBits;
        _clusterSize = header.ClusterSize;
        _refcountOrder = header.RefcountOrder;
        // A refcount block holds cluster_size * 8 / refcount_bits entries.
        _refBlockBits = _clusterBits + 3 - _refcountOrder;
        _metadataSector = metadataSector;
        _cache = new MetadataCache(_clusterSize, cacheBytes);
        _tableOffset = header.RefcountTableOffset;
        _tableClusters = header.RefcountTableClusters;
        _table = new AlignedBlock(_tableClusters << _clusterBits);
        _tableDirty = new DirtySectors(_table.Length, _metadataSector);
        _endCluster = (device.Info.SizeBytes + _clusterSize - 1) >> _clusterBits;
    }

    /// <summary>refcount_order: refcounts are 1 &lt;&lt; order bits wide.</summary>
    public int RefcountOrder => _refcountOrder;

    /// <summary>The largest refcount an entry can hold.</summary>
    public ulong MaximumRefcount => RefcountCodec.Maximum(_refcountOrder);

    /// <summary>refcount_table_offset as the header must say it.</summary>
    public long TableOffset => _tableOffset;

    /// <summary>refcount_table_clusters as the header must say it.</summary>
    public int TableClusters => _tableClusters;

    /// <summary>The first cluster past the end of the file as the allocator knows it (readable without the lock).</summary>
    public long EndCluster => Volatile.Read(ref _endCluster);

    /// <summary>Bytes of memory held: the refcount table and the cached blocks.</summary>
    public long MemoryBytes => _table.Length + _cache.BytesInUse;

    /// <summary>The block cache is over budget with dirty blocks: a write-back pass is needed.</summary>
    public bool CacheNeedsWriteBack => _cache.NeedsWriteBack;

    /// <summary>Something must be written even under lazy refcounts: the cache needs room, or the table changed or moved.</summary>
    public bool StructureNeedsWriteBack => _cache.NeedsWriteBack || _tableDirty.Any || _tableMoved;

    private long TableEntries => _table.Length / 8;

    /// <summary>Reads the refcount table from the file (at open).</summary>
    public IoStatus Load() => DeviceIo.ReadClamped(_device, _tableOffset, _table);

    /// <summary>Registers the refcount table and every cluster-aligned block it points to in the metadata map.</summary>
    public void RegisterStructure(Action<long, long, MetadataKind> register)
    {
        register(_tableOffset, (long)_tableClusters << _clusterBits, MetadataKind.RefcountTable);
        for (long i = 0; i < TableEntries; i++)
        {
            long block = (long)ReadTable(i);
            if (block != 0 && (block & (_clusterSize - 1)) == 0)
            {
                register(block, _clusterSize, MetadataKind.RefcountBlock);
            }
        }
    }

    /// <summary>
    /// Takes over a refcount structure written elsewhere (a rebuild): the cache is dropped, the table
    /// is read from its new place, and the allocator starts from the first cluster again. The new
    /// counts were derived from the L2 tables themselves, so every referenced cluster has a count:
    /// no hole needs proving.
    /// </summary>
    public IoStatus Replace(long tableOffset, int tableClusters, long endCluster)
    {
        _cache.Clear();
        _table.Dispose();
        _table = new AlignedBlock(tableClusters << _clusterBits);
        _tableOffset = tableOffset;
        _tableClusters = tableClusters;
        _tableDirty = new DirtySectors(_table.Length, _metadataSector);
        _endCluster = endCluster;
        _freeHint = 1;
        _holesProven = true;
        return DeviceIo.ReadClamped(_device, tableOffset, _table);
    }

    private ulong ReadTable(long index) => BinaryPrimitives.ReadUInt64BigEndian(_table.Span[(int)(index * 8)..]);

    private void WriteTable(long index, ulong value)
    {
        BinaryPrimitives.WriteUInt64BigEndian(_table.Span[(int)(index * 8)..], value);
        _tableDirty.Mark(index * 8);
    }

    private IoStatus GetBlock(long tableIndex, out MetadataCache.Entry? block)
    {
        block = null;
        if (tableIndex >= TableEntries)
        {
            return IoStatus.Ok;
        }
        ulong tableEntry = ReadTable(tableIndex);
        if ((tableEntry & Qcow2Format.RefcountTableReservedMask) != 0)
        {
            return _corrupt($"refcount table entry {tableIndex} has reserved bits set");
        }
        long offset = (long)tableEntry;
        if (offset == 0)
        {
            return IoStatus.Ok;
        }
        if (_cache.TryGet(offset, out MetadataCache.Entry? cached))
        {
            _statistics.CountCacheHit();
            block = cached;
            return IoStatus.Ok;
        }
        if ((offset & (_clusterSize - 1)) != 0 || offset >= _device.Info.SizeBytes)
        {
            return _corrupt($"refcount table entry {tableIndex} points to 0x{offset:x}, which is not a cluster within the file");
        }
        MetadataKind kind = _metadata.KindOf(offset >> _clusterBits);
        if (kind != MetadataKind.RefcountBlock)
        {
            return _corrupt($"refcount table entry {tableIndex} points to a refcount block at 0x{offset:x} that also holds {MetadataClusters.Describe(kind & ~MetadataKind.RefcountBlock)}");
        }
        _statistics.CountCacheMiss();
        AlignedBlock data = _cache.RentBlock();
        IoStatus status = DeviceIo.ReadClamped(_device, offset, data);
        if (status != IoStatus.Ok)
        {
            _cache.ReturnBlock(data);
            return status;
        }
        block = _cache.Add(offset, data, dirty: false);
        return IoStatus.Ok;
    }

    public IoStatus GetRefcount(long cluster, out ulong refcount)
    {
        IoStatus status = GetBlock(cluster >> _refBlockBits, out MetadataCache.Entry? block);
        refcount = block != null ? RefcountCodec.Get(block.Block.Span, _refcountOrder, (int)(cluster & ((1L << _refBlockBits) - 1))) : 0;
        return status;
    }

    public IoStatus SetRefcount(long cluster, ulong refcount)
    {
        long tableIndex = cluster >> _refBlockBits;
        if (tableIndex >= TableEntries)
        {
            IoStatus grown = GrowTable(tableIndex);
            if (grown != IoStatus.Ok)
            {
                return grown;
            }
        }
        IoStatus status = GetBlock(tableIndex, out MetadataCache.Entry? block);
        if (status != IoStatus.Ok)
        {
            return status;
        }
        if (block == null)
        {
            // A new refcount block, appended at the end of the file. It counts itself: either in its
            // own range (then directly) or in the next block's range (then recursively).
            long blockCluster = _endCluster;
            status = CheckAllocation(blockCluster, 1);
            if (status != IoStatus.Ok)
            {
                return status;
            }
            status = GrowFile(blockCluster + 1);
            if (status != IoStatus.Ok)
            {
                return status;
            }
            Volatile.Write(ref _endCluster, blockCluster + 1);
            _metadata.Add(blockCluster, 1, MetadataKind.RefcountBlock);
            block = _cache.Add(blockCluster << _clusterBits, _cache.RentBlock(), dirty: true);
            WriteTable(tableIndex, (ulong)(blockCluster << _clusterBits));
            if (blockCluster >> _refBlockBits == tableIndex)
            {
                RefcountCodec.Set(block.Block.Span, _refcountOrder, (int)(blockCluster & ((1L << _refBlockBits) - 1)), 1);
            }
            else
            {
                block.Pins++;
                status = SetRefcount(blockCluster, 1);
                block.Pins--;
                if (status != IoStatus.Ok)
                {
                    return status;
                }
            }
        }
        if (refcount > RefcountCodec.Maximum(_refcountOrder))
        {
            return _refuse($"the refcount of cluster {cluster} would overflow {1 << _refcountOrder} bits");
        }
        RefcountCodec.Set(block.Block.Span, _refcountOrder, (int)(cluster & ((1L << _refBlockBits) - 1)), refcount);
        block.Dirty = true;
        return IoStatus.Ok;
    }

    /// <summary>
    /// Moves the refcount table to a larger place at the end of the file. The header points to the
    /// new table only after the table and its blocks are on disk (write-back pass); the old table's
    /// clusters are freed after that.
    /// </summary>
    private IoStatus GrowTable(long neededIndex)
    {
        long entriesPerCluster = _clusterSize / 8;
        long entries = Math.Max(TableEntries * 2, neededIndex + 1);
        long clusters;
        while (true)
        {
            clusters = (entries + entriesPerCluster - 1) / entriesPerCluster;
            // The table's own clusters (and a few refcount blocks after them) must be covered too.
            long lastCluster = _endCluster + clusters + 4;
            long coverage = (lastCluster >> _refBlockBits) + 1;
            if (coverage <= entries)
            {
                break;
            }
            entries = coverage;
        }
        if (clusters << _clusterBits > Qcow2Format.MaximumRefcountTableBytes)
        {
            return IoStatus.NoSpace;
        }
        long first = _endCluster;
        IoStatus status = CheckAllocation(first, clusters);
        if (status != IoStatus.Ok)
        {
            return status;
        }
        status = GrowFile(first + clusters);
        if (status != IoStatus.Ok)
        {
            return status;
        }
        Volatile.Write(ref _endCluster, first + clusters);
        // Both tables are metadata until the old one is retired (after the header points to the new one).
        _metadata.Add(first, clusters, MetadataKind.RefcountTable);
        AlignedBlock table = new((int)(clusters << _clusterBits));
        _table.Span.CopyTo(table.Span);
        _retiredTables.Add((_tableOffset, _tableClusters));
        _table.Dispose();
        _table = table;
        _tableOffset = first << _clusterBits;
        _tableClusters = (int)clusters;
        _tableDirty = new DirtySectors(table.Length, _metadataSector);
        _tableDirty.MarkAll();
        _tableMoved = true;
        for (long c = first; c < first + clusters; c++)
        {
            status = SetRefcount(c, 1);
            if (status != IoStatus.Ok)
            {
                return status;
            }
        }
        return IoStatus.Ok;
    }

    private IoStatus GrowFile(long clusters)
    {
        long bytes = clusters << _clusterBits;
        if (bytes >= Qcow2Format.MaximumHostOffset)
        {
            return IoStatus.NoSpace;
        }
        // Asked every time, even when the file is already long enough: a growable device may have
        // preallocated past what was asked and gives back, on close, whatever was never asked for.
        if (_device is IGrowableBlockDevice growable)
        {
            return growable.EnsureSize(bytes);
        }
        return bytes <= _device.Info.SizeBytes ? IoStatus.Ok : IoStatus.NoSpace;
    }

    /// <summary>Allocates one cluster (refcount 1): the lowest free cluster, or a new one at the end of the file.</summary>
    public IoStatus AllocateCluster(out long hostOffset)
    {
        hostOffset = 0;
        long cluster = -1;
        for (long c = Math.Max(_freeHint, 1); c < _endCluster; c++)
        {
            IoStatus status = GetRefcount(c, out ulong refcount);
            if (status != IoStatus.Ok)
            {
                return status;
            }
            if (refcount == 0)
            {
                status = CheckAllocation(c, 1);
                if (status == IoStatus.Ok && !_holesProven)
                {
                    // A hole: free by its count, but an image's counts may be wrong. Images are
                    // untrusted, so the first hole waits for proof that no L2 entry still uses one.
                    status = _proveHolesUnreferenced();
                    _holesProven = status == IoStatus.Ok;
                }
                if (status != IoStatus.Ok)
                {
                    return status;
                }
                cluster = c;
                break;
            }
        }
        if (cluster < 0)
        {
            cluster = _endCluster;
            IoStatus claimed = CheckAllocation(cluster, 1);
            if (claimed != IoStatus.Ok)
            {
                return claimed;
            }
            IoStatus grown = GrowFile(cluster + 1);
            if (grown != IoStatus.Ok)
            {
                _freeHint = _endCluster;
                return grown;
            }
            Volatile.Write(ref _endCluster, cluster + 1);
        }
        IoStatus set = SetRefcount(cluster, 1);
        if (set != IoStatus.Ok)
        {
            return set;
        }
        _freeHint = cluster + 1;
        hostOffset = cluster << _clusterBits;
        return IoStatus.Ok;
    }

    /// <summary>Allocates <paramref name="count"/> contiguous clusters at the end of the file (tables).</summary>
    public IoStatus AllocateContiguous(int count, out long firstCluster)
    {
        firstCluster = _endCluster;
        IoStatus status = CheckAllocation(firstCluster, count);
        if (status != IoStatus.Ok)
        {
            return status;
        }
        status = GrowFile(firstCluster + count);
        if (status != IoStatus.Ok)
        {
            return status;
        }
        Volatile.Write(ref _endCluster, firstCluster + count);
        for (long c = firstCluster; c < firstCluster + count; c++)
        {
            status = SetRefcount(c, 1);
            if (status != IoStatus.Ok)
            {
                return status;
            }
        }
        return IoStatus.Ok;
    }

    /// <summary>
    /// The allocator found <paramref name="cluster"/> free by its refcount (or past the end of the
    /// file); it must not hold metadata. Refcounts of zero on a live table are corruption
    /// (== Host cluster management ==): the request fails rather than hand the table out.
    /// </summary>
    private IoStatus CheckAllocation(long cluster, long count)
    {
        for (long c = cluster; c < cluster + count; c++)
        {
            MetadataKind kind = _metadata.KindOf(c);
            if (kind != MetadataKind.None)
            {
                return _corrupt($"host cluster 0x{c << _clusterBits:x} has refcount 0 but holds {MetadataClusters.Describe(kind)}; allocating it would overwrite it");
            }
        }
        return IoStatus.Ok;
    }

    /// <summary>Gives back a cluster that nothing references yet (a write that failed before its L2 entry was set).</summary>
    public void ReleaseUnreferenced(long hostOffset) => DecrementRefcount(hostOffset >> _clusterBits);

    public void DecrementRefcount(long cluster)
    {
        if (GetRefcount(cluster, out ulong refcount) == IoStatus.Ok && refcount > 0)
        {
            if (SetRefcount(cluster, refcount - 1) == IoStatus.Ok && refcount == 1)
            {
                _freeHint = Math.Min(_freeHint, cluster);
            }
        }
    }

    /// <summary>
    /// Queues one reference on the cluster at <paramref name="hostOffset"/> to be dropped once the
    /// entry that held it is gone on disk (the next successful write-back pass).
    /// </summary>
    public void FreeAfterWriteBack(long hostOffset) => _pendingFrees.Add(hostOffset);

    /// <summary>
    /// Captures what a write-back pass must write: copies of the dirty refcount blocks (pinned; the
    /// pass unpins them), the dirty runs of the table, and, when the table moved, the tables it
    /// retires. Returns true when the table moved, so that the header must be written after it.
    /// </summary>
    public bool CaptureStructure(List<(long Offset, AlignedBlock Copy, MetadataCache.Entry Entry)> blocks, List<(long Offset, AlignedBlock Copy)> tableRuns,
        List<(long Offset, int Clusters)> retiredTables, Func<AlignedBlock> rentCopy)
    {
        _cache.CaptureDirty(blocks, rentCopy);
        foreach ((int start, int length) in _tableDirty.TakeRuns())
        {
            AlignedBlock copy = new(length);
            _table.Span.Slice(start, length).CopyTo(copy.Span);
            tableRuns.Add((_tableOffset + start, copy));
        }
        if (!_tableMoved)
        {
            return false;
        }
        _tableMoved = false;
        retiredTables.AddRange(_retiredTables);
        _retiredTables.Clear();
        return true;
    }

    /// <summary>The frees queued since the last pass, handed to that pass.</summary>
    public void TakePendingFrees(List<long> into)
    {
        into.AddRange(_pendingFrees);
        _pendingFrees.Clear();
    }

    /// <summary>A pass wrote nothing (its blocks would have overlapped other metadata): its frees and retired tables wait again.</summary>
    public void Requeue(List<long> frees, List<(long Offset, int Clusters)> retiredTables)
    {
        _pendingFrees.AddRange(frees);
        _retiredTables.AddRange(retiredTables);
    }

    /// <summary>After a successful pass: the entries that referenced these clusters are gone on disk, so they may be reused now.</summary>
    public void ApplyFrees(List<long> frees, List<(long Offset, int Clusters)> retiredTables)
    {
        foreach (long freed in frees)
        {
            DecrementRefcount(freed >> _clusterBits);
        }
        foreach ((long offset, int clusters) in retiredTables)
        {
            _metadata.Remove(offset >> _clusterBits, clusters, MetadataKind.RefcountTable);
            for (int i = 0; i < clusters; i++)
            {
                DecrementRefcount((offset >> _clusterBits) + i);
            }
        }
    }

    /// <summary>Evicts clean blocks beyond the cache budget.</summary>
    public void Trim() => _cache.Trim();

    public void Dispose()
    {
        _cache.Dispose();
        _table.Dispose();
    }
}

/// <summary>Reading and writing refcount entries of 1 to 64 bits (refcount_order 0..6) in a refcount block.</summary>
internal static class RefcountCodec
{
    public static ulong Maximum(int order) => order == 6 ? ulong.MaxValue : (1UL << (1 << order)) - 1;

    public static ulong Get(ReadOnlySpan<byte> block, int order, int index)
    {
        switch (order)
        {
            case 3: return block[index];
            case 4: return BinaryPrimitives.ReadUInt16BigEndian(block[(index * 2)..]);
            case 5: return BinaryPrimitives.ReadUInt32BigEndian(block[(index * 4)..]);
            case 6: return BinaryPrimitives.ReadUInt64BigEndian(block[(index * 8)..]);
            default:
                // Sub-byte widths: "bit 0 means the least significant bit" (Refcount block entry).
                int bits = 1 << order;
                int bitIndex = index * bits;
                return (ulong)((block[bitIndex >> 3] >> (bitIndex & 7)) & ((1 << bits) - 1));
        }
    }

    public static void Set(Span<byte> block, int order, int index, ulong value)
    {
        switch (order)
        {
            case 3: block[index] = (byte)value; break;
            case 4: BinaryPrimitives.WriteUInt16BigEndian(block[(index * 2)..], (ushort)value); break;
            case 5: BinaryPrimitives.WriteUInt32BigEndian(block[(index * 4)..], (uint)value); break;
            case 6: BinaryPrimitives.WriteUInt64BigEndian(block[(index * 8)..], value); break;
            default:
                int bits = 1 << order;
                int bitIndex = index * bits;
                int mask = ((1 << bits) - 1) << (bitIndex & 7);
                block[bitIndex >> 3] = (byte)((block[bitIndex >> 3] & ~mask) | (((int)value << (bitIndex & 7)) & mask));
                break;
        }
    }
}
