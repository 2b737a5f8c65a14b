using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>What a cluster, or a subcluster with extended L2 entries, reads as.</summary>
internal enum UnitState : byte
{
    /// <summary>Falls through to the backing device (zeros without one).</summary>
    Unallocated,
    /// <summary>Reads as zeros.</summary>
    Zero,
    /// <summary>Stored in the overlay at the entry's host offset.</summary>
    Data,
    /// <summary>A compressed cluster: not supported.</summary>
    Compressed,
    /// <summary>An entry the specification does not allow (reserved bits, contradictory bitmap).</summary>
    Invalid,
}

/// <summary>An L2 entry: the 64-bit descriptor and, with extended L2 entries, the subcluster bitmap (== Extended L2 Entries ==).</summary>
internal readonly record struct L2Entry(ulong Word, ulong Bitmap)
{
    public long HostOffset => (long)(Word & Qcow2Format.OffsetMask);
    public bool Copied => (Word & Qcow2Format.OflagCopied) != 0;
    public bool Compressed => (Word & Qcow2Format.OflagCompressed) != 0;
    public uint AllocatedBits => (uint)Bitmap;
    public uint ZeroBits => (uint)(Bitmap >> 32);
}

public sealed partial class Qcow2Image
{
    private ulong ReadL1(long index) => _l1.Read(index);

    private void WriteL1(long index, ulong value) => _l1.Write(index, value);

    /// <summary>
    /// Finds the L2 table for <paramref name="guestCluster"/> (under the metadata lock). Without
    /// <paramref name="allocate"/>, a cluster whose L1 entry is empty yields a null table. With it, a
    /// new zeroed table is allocated and linked into the L1 table.
    /// </summary>
    private IoStatus GetL2Table(long guestCluster, bool allocate, out MetadataCache.Entry? table, out int index)
    {
        long l1Index = guestCluster >> _l2.IndexBits;
        index = _l2.IndexOf(guestCluster);
        table = null;
        if (l1Index >= _l1.Size)
        {
            // Cannot happen inside the virtual disk (the header check guarantees l1_size is large enough).
            return allocate ? IoStatus.OutOfRange : IoStatus.Ok;
        }
        ulong l1Entry = ReadL1(l1Index);
        if ((l1Entry & Qcow2Format.L1ReservedMask) != 0)
        {
            return Corrupt($"L1 entry {l1Index} has reserved bits set (0x{l1Entry:x16})");
        }
        long offset = (long)(l1Entry & Qcow2Format.OffsetMask);
        if (offset == 0)
        {
            if (!allocate)
            {
                return IoStatus.Ok;
            }
            IoStatus status = _refcounts.AllocateCluster(out long newTable);
            if (status != IoStatus.Ok)
            {
                return status;
            }
            _metadata.Add(newTable >> _clusterBits, 1, MetadataKind.L2Table);
            table = _l2.AddNew(newTable);
            WriteL1(l1Index, (ulong)newTable | Qcow2Format.OflagCopied);
            return IoStatus.Ok;
        }
        if ((offset & (_clusterSize - 1)) != 0 || offset >= _overlay.Info.SizeBytes)
        {
            return Corrupt($"L1 entry {l1Index} points to 0x{offset:x}, which is not a cluster within the file");
        }
        if (allocate)
        {
            // The table is about to change. A cluster that also holds another structure (an L1 entry
            // pointing at a refcount block, say) fails now, before a write is acknowledged whose
            // entry could never be written back. Reads may still use it, as QEMU's do.
            MetadataKind kind = _metadata.KindOf(offset >> _clusterBits);
            if (kind != MetadataKind.L2Table)
            {
                return Corrupt($"L1 entry {l1Index} points to an L2 table at 0x{offset:x} that also holds {MetadataClusters.Describe(kind & ~MetadataKind.L2Table)}");
            }
        }
        if (allocate && (l1Entry & Qcow2Format.OflagCopied) == 0)
        {
            // The table may be shared (internal snapshots): writing it in place needs its refcount to be one.
            IoStatus status = _refcounts.GetRefcount(offset >> _clusterBits, out ulong refcount);
            if (status != IoStatus.Ok)
            {
                return status;
            }
            if (refcount == 0)
            {
                return Corrupt($"L1 entry {l1Index} points to an L2 table at 0x{offset:x} whose refcount is 0");
            }
            if (refcount != 1)
            {
                return RefuseRequest($"L2 table at 0x{offset:x} is shared (refcount {refcount}); writing shared tables is not supported");
            }
            WriteL1(l1Index, l1Entry | Qcow2Format.OflagCopied);
        }
        return _l2.Load(offset, out table);
    }

    /// <summary>
    /// Proves that the refcounts can be trusted to find free clusters: every host cluster an active
    /// L2 entry references (a data cluster, or each cluster a compressed cluster's sectors span) has
    /// a refcount above 0. Called by the allocator, under the metadata lock, once per open and only
    /// before it first hands out a cluster from a hole (a refcount of 0 below the end of the file):
    /// appending needs no proof, and from this walk on every reference XenDisk makes or drops keeps
    /// the refcounts in step. A referenced cluster with refcount 0 is corruption (== Host cluster
    /// management ==; QEMU's checker reports it as "refcount=0 reference=1"): handing it out would
    /// put new data over live guest data, so the allocation fails and the image is marked corrupt.
    /// Tables are taken from the cache when there (newer than the file), else read without caching.
    /// </summary>
    private IoStatus ProveFreeClustersUnreferenced()
    {
        using AlignedBlock scratch = new(_clusterSize);
        long fileSize = _overlay.Info.SizeBytes;
        for (long l1Index = 0; l1Index < _l1.Size; l1Index++)
        {
            ulong l1Entry = ReadL1(l1Index);
            long tableOffset = (long)(l1Entry & Qcow2Format.OffsetMask);
            if (tableOffset == 0 || (l1Entry & Qcow2Format.L1ReservedMask) != 0 || (tableOffset & (_clusterSize - 1)) != 0 || tableOffset >= fileSize)
            {
                continue; // no table, or one that fails whatever uses it (GetL2Table)
            }
            IoStatus status = _l2.Peek(tableOffset, scratch, out AlignedBlock table);
            if (status != IoStatus.Ok)
            {
                return status;
            }
            for (int index = 0; index < _l2.EntriesPerTable; index++)
            {
                L2Entry entry = _l2.Read(table.Span, index);
                long first, last;
                if (entry.Compressed)
                {
                    CompressedExtent extent = DecodeCompressed(entry);
                    (first, last) = (extent.FirstCluster, extent.LastCluster);
                }
                else
                {
                    long host = entry.HostOffset;
                    if (host == 0 || (host & (_clusterSize - 1)) != 0 || host >= fileSize)
                    {
                        continue; // unallocated, or an entry that fails whatever uses it (CheckDataCluster)
                    }
                    first = last = host >> _clusterBits;
                }
                for (long cluster = first; cluster <= last; cluster++)
                {
                    status = _refcounts.GetRefcount(cluster, out ulong refcount);
                    if (status != IoStatus.Ok)
                    {
                        return status;
                    }
                    if (refcount == 0)
                    {
                        long guestCluster = (l1Index << _l2.IndexBits) + index;
                        return Corrupt($"host cluster 0x{cluster << _clusterBits:x} has refcount 0 but holds guest cluster {guestCluster}'s data; the allocator would hand it out and overwrite it");
                    }
                }
            }
        }
        return IoStatus.Ok;
    }

    /// <summary><see cref="LookupEntry"/> under the metadata lock, for paths that hold only a cluster stripe.</summary>
    private IoStatus LookupEntryLocked(long guestCluster, out L2Entry entry)
    {
        lock (_metadataLock)
        {
            return LookupEntry(guestCluster, out entry);
        }
    }

    /// <summary>Looks up the entry of <paramref name="guestCluster"/> (under the metadata lock); an absent L2 table reads as an empty entry.</summary>
    private IoStatus LookupEntry(long guestCluster, out L2Entry entry)
    {
        IoStatus status = GetL2Table(guestCluster, allocate: false, out MetadataCache.Entry? table, out int index);
        entry = table != null && status == IoStatus.Ok ? _l2.Read(table, index) : default;
        return status;
    }

    /// <summary>
    /// The state of one unit (subcluster with extended L2 entries, else the whole cluster), following
    /// == Cluster mapping == and == Extended L2 Entries ==.
    /// </summary>
    private UnitState StateOf(L2Entry entry, int unit)
    {
        if (entry.Compressed)
        {
            return UnitState.Compressed;
        }
        if ((entry.Word & Qcow2Format.L2ReservedMask) != 0)
        {
            return UnitState.Invalid;
        }
        long host = entry.HostOffset;
        if (!_extendedL2)
        {
            if ((entry.Word & Qcow2Format.OflagZero) != 0)
            {
                return UnitState.Zero;
            }
            if (host != 0)
            {
                return UnitState.Data;
            }
            // "If the offset is 0 [...] the cluster is unallocated" (== Cluster mapping ==): offset 0
            // with COPIED names a host offset only with an external data file, which XenDisk refuses
            // at open; without one QEMU reads it as unallocated too.
            return UnitState.Unallocated;
        }
        uint allocated = entry.AllocatedBits;
        uint zero = entry.ZeroBits;
        if ((entry.Word & Qcow2Format.OflagZero) != 0 || (allocated & zero) != 0 || (host == 0 && allocated != 0))
        {
            return UnitState.Invalid;
        }
        uint bit = 1u << unit;
        if ((allocated & bit) != 0)
        {
            return UnitState.Data;
        }
        return (zero & bit) != 0 ? UnitState.Zero : UnitState.Unallocated;
    }
}
