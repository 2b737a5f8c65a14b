using System.Buffers.Binary;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>
/// Metadata before the answer (policies Flush and Lazy): a request that changed the mapping has its
/// L2 tables and L1 entries written into the image file before it is answered, without a device
/// flush. The service may be killed at any moment while the guest keeps running; the kernel's page
/// cache outlives the process, so the next instance reads every answered write's mapping from the
/// file. Durability against a power loss still comes only from the guest's flush (the write-back
/// pass, <see cref="WriteBackCore"/>).
/// <para>
/// The page cache may write these blocks to the disk in any order and at any time, so after a power
/// loss an L2 entry may be on disk while the refcount that counts its cluster, or the data it points
/// to, is not. What keeps every such image valid:
/// <list type="number">
/// <item>The header's dirty bit (== Header ==, incompatible bit 0: "refcounts may be inconsistent,
/// make sure to scan L1/L2 tables to repair refcounts before accessing the image") is set and made
/// durable before the first block is written this way, once per open, and is cleared only by a
/// clean close, after a pass has made everything durable. This is the state lazy refcounts
/// (compatible bit 0) leave an image in. Opening a dirty image rebuilds the refcounts from the
/// L1/L2 tables (<see cref="RebuildRefcounts"/>; QEMU repairs it the same way on open), so a
/// cluster any L2 entry references is counted before the allocator hands anything out, and the
/// allocator's proof that holes are unreferenced (<see cref="ProveFreeClustersUnreferenced"/>) finds
/// nothing to complain about after a restart.</item>
/// <item>An L1 entry reaches the file only after the new L2 table it points to is durable (a flush
/// between them), as QEMU does when it allocates a table: otherwise a power loss could leave the
/// L1 entry pointing at whatever the table's cluster held before, which would be read as mappings.</item>
/// <item>An L2 entry reaches the file only after the file's size covering its cluster is durable (a
/// flush when the file grew since the last one; the file grows in preallocation steps, so this is
/// rare), so no entry can point past the end of the file after a power loss.</item>
/// <item>An L2 entry whose cluster holds bytes the guest did not write with that request (a
/// partial write completed from the backing file or with zeros: a copy-up) reaches the file only
/// after those bytes are durable (a flush first): otherwise a power loss could change sectors the
/// guest never wrote. QEMU's copy-on-write makes the L2 update depend on a flush in the same way.
/// A write that covers whole allocation units needs no such flush: all its bytes are the guest's
/// own unflushed data.</item>
/// </list>
/// What a power loss can still do to writes the guest did not flush: their clusters may read as
/// zeros or as what the cluster held before it was reused, instead of old or new data. The guest
/// was never promised those writes, and whatever was flushed is intact.
/// </para>
/// <para>
/// Cost: nothing on writes that change no metadata (in-place rewrites). An allocating request
/// writes the changed sectors of each L2 table it touched (the whole table when it is new) and each
/// changed L1 sector once, merged with neighbours; it
/// takes the write-back lock, so it waits for a pass that is running (a guest flush). A request
/// that copied up also waits for one flush, shared with every request whose entries the same
/// publication writes; whole-unit writes (subclusters make them the common case) need none.
/// </para>
/// </summary>
public sealed partial class Qcow2Image
{
    /// <summary>Flush and Lazy write mappings before the answer; Sync makes them durable anyway; Transient promises nothing.</summary>
    private bool PublishesMetadata => !ReadOnly && _policy is MetadataPolicy.Flush or MetadataPolicy.Lazy;

    /// <summary>
    /// An entry changed since the last flush points at bytes the guest did not write with that
    /// request (a copy-up): the next publication flushes before it writes tables (rule 4). Set in
    /// the same critical section as the entry, so a table copy that contains the entry sees it.
    /// Guarded by the metadata lock.
    /// </summary>
    private bool _dataFirstPending;

    /// <summary>The file's size as of the last device flush (a size it keeps after a power loss). Guarded by the write-back lock.</summary>
    private long _durableFileBytes;

    // Reused by every publication (under the write-back lock), so that a request allocates nothing.
    private readonly List<MetadataCache.Entry> _publishTables = [];
    private readonly List<(long Offset, AlignedBlock Copy, int Length)> _publishBlocks = [];
    private readonly List<(int Start, int Length)> _publishL1Runs = [];

    /// <summary>Writes the mapping changed by answered requests into the file (no flush unless the rules above need one).</summary>
    private IoStatus PublishMetadata()
    {
        lock (_writeBackLock)
        {
            if (_failure != null)
            {
                PersistCorruptBit();
                return IoStatus.IoError;
            }
            IoStatus status = MarkDirtyOnce();
            if (status != IoStatus.Ok)
            {
                return Fail(status, "setting the dirty bit");
            }
            bool newTables = false;
            bool dataFirst;
            int tables;
            long fileBytes;
            lock (_metadataLock)
            {
                dataFirst = _dataFirstPending;
                _dataFirstPending = false;
                _l2.TakeUnwritten(_publishTables);
                _l1.TakeUnwrittenRuns(_publishL1Runs);
                tables = _publishTables.Count;
                foreach (MetadataCache.Entry table in _publishTables)
                {
                    status = status == IoStatus.Ok ? CheckOverlap(table.Offset, _clusterSize, MetadataKind.L2Table, "an L2 table") : status;
                    bool isNew = table.New;
                    newTables |= isNew;
                    table.New = false;
                    // Only the sectors holding entries changed since the table last reached the file
                    // (a new table whole: its cluster held something else before). The rest of the
                    // table on disk already says what memory says.
                    int start = isNew ? 0 : table.UnwrittenStart / _metadataSector * _metadataSector;
                    int end = isNew ? _clusterSize : Math.Min(_clusterSize, (table.UnwrittenEnd + _metadataSector - 1) / _metadataSector * _metadataSector);
                    // A copy taken under the lock: the table may change again as soon as the lock is released.
                    AlignedBlock copy = RentCopy();
                    table.Block.Span[start..end].CopyTo(copy.Span);
                    _publishBlocks.Add((table.Offset + start, copy, end - start));
                }
                _publishBlocks.Sort(static (a, b) => a.Offset.CompareTo(b.Offset));
                foreach ((int start, int length) in _publishL1Runs)
                {
                    status = status == IoStatus.Ok ? CheckOverlap(_l1.Offset + start, length, MetadataKind.L1Table, "the L1 table") : status;
                    AlignedBlock copy = length <= _clusterSize ? RentCopy() : new AlignedBlock(length);
                    _l1.Block.Span.Slice(start, length).CopyTo(copy.Span);
                    _publishBlocks.Add((_l1.Offset + start, copy, length));
                }
                fileBytes = _overlay.Info.SizeBytes;
            }
            if (status == IoStatus.Ok && _publishBlocks.Count > 0)
            {
                if (fileBytes > _durableFileBytes || dataFirst)
                {
                    // Rules 3 and 4: the file's new size, and copied-up data, before any entry that points to them.
                    status = FlushForMetadata(fileBytes);
                }
                if (status == IoStatus.Ok && tables > 0)
                {
                    status = WriteBlocks(_publishBlocks, 0, tables);
                    _statistics.CountMetadataWrites(tables);
                }
                if (status == IoStatus.Ok && newTables && _publishL1Runs.Count > 0)
                {
                    // Rule 2: a new table is durable before the L1 entry that points at it.
                    status = FlushForMetadata(fileBytes);
                }
                if (status == IoStatus.Ok && _publishL1Runs.Count > 0)
                {
                    status = WriteBlocks(_publishBlocks, tables, _publishBlocks.Count - tables);
                    _statistics.CountMetadataWrites(_publishL1Runs.Count);
                }
            }
            lock (_metadataLock)
            {
                foreach ((_, AlignedBlock copy, _) in _publishBlocks)
                {
                    if (copy.Length == _clusterSize)
                    {
                        Recycle(copy);
                    }
                    else
                    {
                        copy.Dispose();
                    }
                }
            }
            _publishTables.Clear();
            _publishBlocks.Clear();
            _publishL1Runs.Clear();
            if (status != IoStatus.Ok)
            {
                // Memory and file may now disagree about what a restart would see: stop, as a failed pass does.
                PersistCorruptBit();
                return Fail(status, "writing the mapping of answered writes");
            }
            return IoStatus.Ok;
        }
    }

    /// <summary>
    /// Sets the dirty bit (rule 1) before the first publication: only the header's
    /// incompatible_features field changes, then a flush makes it durable. Lazy set it at open.
    /// The caller holds the write-back lock, so no pass writes the header meanwhile and the header
    /// buffer says what the file says.
    /// </summary>
    private IoStatus MarkDirtyOnce()
    {
        if ((_incompatible & Qcow2Format.IncompatibleDirty) != 0)
        {
            return IoStatus.Ok;
        }
        lock (_metadataLock)
        {
            _incompatible |= Qcow2Format.IncompatibleDirty;
            BinaryPrimitives.WriteUInt64BigEndian(_header.Span[Qcow2HeaderField.IncompatibleFeatures..], _incompatible);
        }
        IoStatus status = DeviceIo.Write(_overlay, 0, _header, 0, HeaderWriteLength);
        _statistics.CountMetadataWrites(1);
        return status == IoStatus.Ok ? FlushForMetadata(_overlay.Info.SizeBytes) : status;
    }

    /// <summary>A device flush for metadata ordering; <paramref name="fileBytes"/> (read before it) is durable after it.</summary>
    private IoStatus FlushForMetadata(long fileBytes)
    {
        IoStatus status = _overlay.Flush();
        _statistics.CountMetadataFlush();
        if (status == IoStatus.Ok)
        {
            _durableFileBytes = Math.Max(_durableFileBytes, fileBytes);
        }
        return status;
    }
}
