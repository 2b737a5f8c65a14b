using System.Buffers.Binary;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>Refcounts and cluster allocation (== Host cluster management ==). Everything here runs under the metadata lock.</summary>
public sealed partial class Qcow2Image
{
    private long RefTableEntries => _refTable.Length / 8;

    private ulong ReadRefTable(long index) => BinaryPrimitives.ReadUInt64BigEndian(_refTable.Span[(int)(index * 8)..]);

    private void WriteRefTable(long index, ulong value)
    {
        BinaryPrimitives.WriteUInt64BigEndian(_refTable.Span[(int)(index * 8)..], value);
        _refTableDirty.Mark(index * 8);
    }

    private IoStatus GetRefBlock(long tableIndex, out MetadataCache.Entry? block)
    {
        block = null;
        if (tableIndex >= RefTableEntries)
        {
            return IoStatus.Ok;
        }
        ulong tableEntry = ReadRefTable(tableIndex);
        if ((tableEntry & Qcow2Format.RefcountTableReservedMask) != 0)
        {
            return Corrupt($"refcount table entry {tableIndex} has reserved bits set");
        }
        long offset = (long)tableEntry;
        if (offset == 0)
        {
            return IoStatus.Ok;
        }
        if (_refcountCache.TryGet(offset, out MetadataCache.Entry? cached))
        {
            _statistics.CountCacheHit();
            block = cached;
            return IoStatus.Ok;
        }
        if ((offset & (_clusterSize - 1)) != 0 || offset >= _overlay.Info.SizeBytes)
        {
            return Corrupt($"refcount table entry {tableIndex} points to 0x{offset:x}, which is not a cluster within the file");
        }
        MetadataKind kind = _metadata.KindOf(offset >> _clusterBits);
        if (kind != MetadataKind.RefcountBlock)
        {
            return Corrupt($"refcount table entry {tableIndex} points to a refcount block at 0x{offset:x} that also holds {MetadataClusters.Describe(kind & ~MetadataKind.RefcountBlock)}");
        }
        _statistics.CountCacheMiss();
        AlignedBlock data = _refcountCache.RentBlock();
        IoStatus status = DeviceIo.ReadClamped(_overlay, offset, data);
        if (status != IoStatus.Ok)
        {
            _refcountCache.ReturnBlock(data);
            return status;
        }
        block = _refcountCache.Add(offset, data, dirty: false);
        return IoStatus.Ok;
    }

    private IoStatus GetRefcount(long cluster, out ulong refcount)
    {
        IoStatus status = GetRefBlock(cluster >> _refBlockBits, out MetadataCache.Entry? block);
        refcount = block != null ? RefcountCodec.Get(block.Block.Span, _refcountOrder, (int)(cluster & ((1L << _refBlockBits) - 1))) : 0;
        return status;
    }

    private IoStatus SetRefcount(long cluster, ulong refcount)
    {
        long tableIndex = cluster >> _refBlockBits;
        if (tableIndex >= RefTableEntries)
        {
            IoStatus grown = GrowRefcountTable(tableIndex);
            if (grown != IoStatus.Ok)
            {
                return grown;
            }
        }
        IoStatus status = GetRefBlock(tableIndex, out MetadataCache.Entry? block);
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
            _endCluster = blockCluster + 1;
            _metadata.Add(blockCluster, 1, MetadataKind.RefcountBlock);
            block = _refcountCache.Add(blockCluster << _clusterBits, _refcountCache.RentBlock(), dirty: true);
            WriteRefTable(tableIndex, (ulong)(blockCluster << _clusterBits));
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
            return RefuseRequest($"the refcount of cluster {cluster} would overflow {1 << _refcountOrder} bits");
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
    private IoStatus GrowRefcountTable(long neededIndex)
    {
        long entriesPerCluster = _clusterSize / 8;
        long entries = Math.Max(RefTableEntries * 2, neededIndex + 1);
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
        _endCluster = first + clusters;
        // Both tables are metadata until the old one is retired (after the header points to the new one).
        _metadata.Add(first, clusters, MetadataKind.RefcountTable);
        AlignedBlock table = new((int)(clusters << _clusterBits));
        _refTable.Span.CopyTo(table.Span);
        _retiredTables.Add((_refTableOffset, _refTableClusters));
        _refTable.Dispose();
        _refTable = table;
        _refTableOffset = first << _clusterBits;
        _refTableClusters = (int)clusters;
        _refTableDirty = new DirtySectors(table.Length, _metadataSector);
        _refTableDirty.MarkAll();
        _refTableMoved = true;
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
        if (_overlay is IGrowableBlockDevice growable)
        {
            return growable.EnsureSize(bytes);
        }
        return bytes <= _overlay.Info.SizeBytes ? IoStatus.Ok : IoStatus.NoSpace;
    }

    /// <summary>Allocates one cluster (refcount 1): the lowest free cluster, or a new one at the end of the file.</summary>
    private IoStatus AllocateCluster(out long hostOffset)
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
            _endCluster = cluster + 1;
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
    private IoStatus AllocateContiguous(int count, out long firstCluster)
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
        _endCluster = firstCluster + count;
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

    /// <summary>Gives back a cluster that nothing references yet (a write that failed before its L2 entry was set).</summary>
    private void ReleaseUnreferenced(long hostOffset) => DecrementRefcount(hostOffset >> _clusterBits);

    private void DecrementRefcount(long cluster)
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
    /// Rebuilds the refcount structure from the L1/L2 tables (a dirty image, == Header == bit 0): the
    /// new table and blocks go after everything referenced, and the header points to them only once
    /// they are durable. The old structure's clusters come out of the count, so they become free.
    /// </summary>
    private IoStatus RebuildRefcounts()
    {
        Qcow2Header current = _openedHeader with { L1Size = _l1.Size, L1TableOffset = _l1.Offset, RefcountTableOffset = _refTableOffset, RefcountTableClusters = _refTableClusters };
        ReferenceCounts counts = ReferenceScanner.Scan(_overlay, current, includeRefcountStructure: false);
        IoStatus status = RefcountStructure.WriteFresh(_overlay, counts.Counts, _clusterBits, _refcountOrder, out long tableOffset, out int tableClusters, out long endCluster);
        if (status != IoStatus.Ok)
        {
            return status;
        }
        lock (_metadataLock)
        {
            _refcountCache.Clear();
            _refTable.Dispose();
            _refTable = new AlignedBlock(tableClusters << _clusterBits);
            _refTableOffset = tableOffset;
            _refTableClusters = tableClusters;
            _refTableDirty = new DirtySectors(_refTable.Length, _metadataSector);
            _endCluster = endCluster;
            _freeHint = 1;
            status = DeviceIo.ReadClamped(_overlay, tableOffset, _refTable);
        }
        return status == IoStatus.Ok ? WriteHeaderNow() : status;
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
