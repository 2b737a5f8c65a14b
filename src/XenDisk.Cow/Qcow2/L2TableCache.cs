using System.Buffers.Binary;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>
/// The L2 tables of an open qcow2 image held in memory (qcow2 spec, == Cluster mapping == and
/// == Extended L2 Entries ==): a least-recently-used cache of whole tables keyed by host offset,
/// loaded on a miss, with the entry layout (8 bytes, or 16 with extended L2 entries) and the dirty
/// tracking a write-back pass captures. Only clean tables are evicted (<see cref="MetadataCache"/>):
/// a dirty table leaves memory only after a pass wrote it, after the data it points to.
/// <para>
/// Not thread-safe: the image's metadata lock guards every call. Ownership: the cache owns its
/// table buffers and releases them in <see cref="Dispose"/>; the device and statistics are borrowed.
/// A table returned by a lookup is borrowed until the metadata lock is released.
/// </para>
/// </summary>
internal sealed class L2TableCache : IDisposable
{
    private readonly IBlockDevice _device;
    private readonly OverlayStatistics _statistics;
    private readonly MetadataCache _tables;
    private readonly int _entrySize;
    private readonly bool _extendedL2;
    private readonly int _indexBits;

    /// <param name="device">The image file (borrowed).</param>
    /// <param name="header">Supplies cluster_bits and the extended L2 entries bit (incompatible bit 4).</param>
    /// <param name="budgetBytes">The cache's budget; dirty tables may exceed it until written back.</param>
    /// <param name="trackUnwritten">Keep the tables changed since they last reached the file (see <see cref="TakeUnwritten"/>).</param>
    public L2TableCache(IBlockDevice device, Qcow2Header header, long budgetBytes, OverlayStatistics statistics, bool trackUnwritten)
    {
        _device = device;
        _statistics = statistics;
        _extendedL2 = header.ExtendedL2;
        _entrySize = header.L2EntrySize;
        // An L2 table fills one cluster: cluster_size / 8 entries, or / 16 with extended L2 entries.
        _indexBits = header.ClusterBits - (_extendedL2 ? 4 : 3);
        _tables = new MetadataCache(header.ClusterSize, budgetBytes, trackUnwritten);
    }

    /// <summary>log2 of the entries in one table: a guest cluster's L1 index is its number shifted right by this.</summary>
    public int IndexBits => _indexBits;

    /// <summary>Entries in one table.</summary>
    public int EntriesPerTable => 1 << _indexBits;

    /// <summary>How many tables the budget allows.</summary>
    public int Capacity => _tables.Capacity;

    public long BytesInUse => _tables.BytesInUse;

    /// <summary>Dirty tables hold the cache over its budget: a write-back pass is needed.</summary>
    public bool NeedsWriteBack => _tables.NeedsWriteBack;

    /// <summary>The index of <paramref name="guestCluster"/>'s entry in its L2 table.</summary>
    public int IndexOf(long guestCluster) => (int)(guestCluster & ((1L << _indexBits) - 1));

    /// <summary>The table at <paramref name="offset"/> if it is in memory, without reading the file.</summary>
    public bool TryGetCached(long offset, out MetadataCache.Entry table) => _tables.TryGet(offset, out table);

    /// <summary>The table at <paramref name="offset"/>, read from the file on a miss. The caller has checked the offset against the metadata map.</summary>
    public IoStatus Load(long offset, out MetadataCache.Entry? table)
    {
        if (_tables.TryGet(offset, out MetadataCache.Entry cached))
        {
            _statistics.CountCacheHit();
            table = cached;
            return IoStatus.Ok;
        }
        _statistics.CountCacheMiss();
        AlignedBlock block = _tables.RentBlock();
        IoStatus read = DeviceIo.ReadClamped(_device, offset, block);
        if (read != IoStatus.Ok)
        {
            _tables.ReturnBlock(block);
            table = null;
            return read;
        }
        table = _tables.Add(offset, block, dirty: false);
        return IoStatus.Ok;
    }

    /// <summary>A new, zeroed (all entries unallocated) table at <paramref name="offset"/>, dirty until written back.</summary>
    public MetadataCache.Entry AddNew(long offset) => _tables.Add(offset, _tables.RentBlock(), dirty: true);

    /// <summary>
    /// The table at <paramref name="offset"/> as it is now: the cached copy (which may be newer than
    /// the file), or else read from the file into <paramref name="scratch"/> without caching it, so
    /// that a walk over every table neither evicts the working set nor reorders it.
    /// </summary>
    public IoStatus Peek(long offset, AlignedBlock scratch, out AlignedBlock table)
    {
        if (_tables.TryPeek(offset, out MetadataCache.Entry cached))
        {
            table = cached.Block;
            return IoStatus.Ok;
        }
        table = scratch;
        return DeviceIo.ReadClamped(_device, offset, scratch);
    }

    public L2Entry Read(MetadataCache.Entry table, int index) => Read(table.Block.Span, index);

    public L2Entry Read(ReadOnlySpan<byte> table, int index)
    {
        ReadOnlySpan<byte> span = table[(index * _entrySize)..];
        ulong word = BinaryPrimitives.ReadUInt64BigEndian(span);
        ulong bitmap = _extendedL2 ? BinaryPrimitives.ReadUInt64BigEndian(span[8..]) : 0;
        return new L2Entry(word, bitmap);
    }

    /// <summary>Changes an entry in memory and marks its table for the next write-back.</summary>
    public void Write(MetadataCache.Entry table, int index, L2Entry entry)
    {
        Span<byte> span = table.Block.Span[(index * _entrySize)..];
        BinaryPrimitives.WriteUInt64BigEndian(span, entry.Word);
        if (_extendedL2)
        {
            BinaryPrimitives.WriteUInt64BigEndian(span[8..], entry.Bitmap);
        }
        _tables.MarkChanged(table, index * _entrySize, _entrySize);
    }

    /// <summary>The tables changed since they last reached the file (see <see cref="MetadataCache.TakeUnwritten"/>).</summary>
    public void TakeUnwritten(List<MetadataCache.Entry> into) => _tables.TakeUnwritten(into);

    /// <summary>Copies the dirty tables for a write-back pass (see <see cref="MetadataCache.CaptureDirty"/>).</summary>
    public void CaptureDirty(List<(long Offset, AlignedBlock Copy, MetadataCache.Entry Entry)> into, Func<AlignedBlock> rentCopy) => _tables.CaptureDirty(into, rentCopy);

    /// <summary>Evicts clean tables beyond the budget.</summary>
    public void Trim() => _tables.Trim();

    public void Dispose() => _tables.Dispose();
}
