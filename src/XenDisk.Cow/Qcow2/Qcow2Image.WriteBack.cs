using XenDisk.Cow.Policies;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>
/// The write-back pass: dirty metadata reaches the disk in an order that keeps every crash point
/// consistent (at worst, leaked clusters):
/// <list type="number">
/// <item>flush: the data that new L2 entries point to is durable;</item>
/// <item>refcount blocks (new clusters are counted before anything references them);</item>
/// <item>flush, then the refcount table, and when the table moved, flush and the header;</item>
/// <item>flush, then L2 tables;</item>
/// <item>flush, then L1 entries (a new L2 table is durable before the L1 entry that points at it);</item>
/// <item>flush; only now are freed clusters given back to the allocator, since no durable entry references them.</item>
/// </list>
/// Each dirty block is written once per pass however many writes touched it. Blocks are copied
/// under the metadata lock (a consistent snapshot) and written outside it, so guest I/O continues
/// while the pass runs; passes themselves are serialised.
/// </summary>
public sealed partial class Qcow2Image
{
    private readonly Stack<AlignedBlock> _writeBackSpares = new();

    private sealed class Batch
    {
        public readonly List<(long Offset, AlignedBlock Copy, MetadataCache.Entry Entry)> RefBlocks = [];
        public readonly List<(long Offset, AlignedBlock Copy, MetadataCache.Entry Entry)> L2Tables = [];
        public readonly List<(long Offset, AlignedBlock Copy)> RefTableRuns = [];
        public readonly List<(long Offset, AlignedBlock Copy)> L1Runs = [];
        public AlignedBlock? Header;
        public readonly List<long> Frees = [];
        public readonly List<(long Offset, int Clusters)> RetiredTables = [];

        public bool IsEmpty => RefBlocks.Count == 0 && L2Tables.Count == 0 && RefTableRuns.Count == 0 && L1Runs.Count == 0 && Frees.Count == 0 && Header == null;
    }

    /// <summary>Passes begun (numbered under the write-back lock, before they capture anything).</summary>
    private long _passesBegun;

    /// <summary>The number of the last pass that made everything before it durable (a guest-flush pass that succeeded).</summary>
    private long _lastDurablePass;

    private IoStatus WriteBack(bool forGuestFlush)
    {
        // Group commit: any pass that begins after this point captures this caller's metadata and
        // flushes its data, so when such a pass has already completed while this caller waited for
        // the lock, its work is done. Concurrent sync writes and flushes from several queues then
        // share one pass (and its few device flushes) instead of each running its own.
        long covering = Interlocked.Read(ref _passesBegun) + 1;
        lock (_writeBackLock)
        {
            if (forGuestFlush && _lastDurablePass >= covering && _failure == null)
            {
                _statistics.CountSharedWriteBack();
                return IoStatus.Ok;
            }
            long pass = Interlocked.Increment(ref _passesBegun);
            IoStatus status = WriteBackCore(forGuestFlush, forceRefcounts: false);
            if (status == IoStatus.Ok && forGuestFlush)
            {
                _lastDurablePass = pass;
            }
            return status;
        }
    }

    /// <summary>Runs one pass; the caller holds the write-back lock.</summary>
    private IoStatus WriteBackCore(bool forGuestFlush, bool forceRefcounts)
    {
        if (_failure != null)
        {
            PersistCorruptBit();
            return IoStatus.IoError;
        }
        Batch batch = new();
        IoStatus overlap = IoStatus.Ok;
        lock (_metadataLock)
        {
            // Lazy refcounts: the dirty bit covers refcount blocks, which are written only when the
            // cache needs room, when the table changes, or on close.
            bool refcounts = forceRefcounts || _policy != MetadataPolicy.Lazy || _refcounts.StructureNeedsWriteBack;
            if (refcounts && _refcounts.CaptureStructure(batch.RefBlocks, batch.RefTableRuns, batch.RetiredTables, RentCopy))
            {
                // The table moved: the header points to it once it and its blocks are written.
                UpdateHeaderFields();
                batch.Header = CopyOf(_header, 0, HeaderWriteLength);
            }
            _l2.CaptureDirty(batch.L2Tables, RentCopy);
            foreach ((int start, int length) in _l1.TakeDirtyRuns())
            {
                batch.L1Runs.Add((_l1.Offset + start, CopyOf(_l1.Block, start, length)));
            }
            _refcounts.TakePendingFrees(batch.Frees);
            // The pass flushes the data before it writes any table, so copied-up data is covered.
            _dataFirstPending = false;
            // Every block goes only where the map says that structure lives; nothing of the pass is
            // written when one would land on something else.
            overlap = CheckBatch(batch);
        }

        IoStatus status = overlap;
        if (status == IoStatus.Ok && (!batch.IsEmpty || forGuestFlush))
        {
            bool barriers = _policy != MetadataPolicy.Transient;
            bool unflushed = true; // guest data written before this pass
            void Barrier()
            {
                if (status == IoStatus.Ok && barriers && unflushed)
                {
                    status = FlushForMetadata(_overlay.Info.SizeBytes);
                    unflushed = false;
                }
            }
            void WriteAll<T>(List<T> items, Func<T, (long, AlignedBlock)> select)
            {
                if (status != IoStatus.Ok || items.Count == 0)
                {
                    return;
                }
                Barrier();
                status = status == IoStatus.Ok ? WriteBlocks(items.Select(select).ToList()) : status;
                _statistics.CountMetadataWrites(items.Count);
                unflushed = true;
            }

            WriteAll(batch.RefBlocks, b => (b.Offset, b.Copy));
            WriteAll(batch.RefTableRuns, r => r);
            if (batch.Header != null)
            {
                WriteAll(new List<(long, AlignedBlock)> { (0, batch.Header) }, h => h);
            }
            WriteAll(batch.L2Tables, b => (b.Offset, b.Copy));
            WriteAll(batch.L1Runs, r => r);
            Barrier();
        }

        lock (_metadataLock)
        {
            foreach (var (_, copy, entry) in batch.RefBlocks.Concat(batch.L2Tables))
            {
                entry.Pins--;
                if (status != IoStatus.Ok)
                {
                    entry.Dirty = true;
                }
                Recycle(copy);
            }
            foreach (var (_, copy) in batch.RefTableRuns.Concat(batch.L1Runs))
            {
                copy.Dispose();
            }
            batch.Header?.Dispose();
            if (overlap != IoStatus.Ok)
            {
                // Corrupt() has recorded the failure; nothing of this pass was written and nothing is freed.
                _refcounts.Requeue(batch.Frees, batch.RetiredTables);
            }
            else if (status != IoStatus.Ok)
            {
                return Fail(status, "writing back metadata");
            }
            else
            {
                ApplyFrees(batch);
            }
        }
        if (overlap != IoStatus.Ok)
        {
            PersistCorruptBit();
        }
        return status;
    }

    /// <summary>After a successful pass (under the metadata lock).</summary>
    private void ApplyFrees(Batch batch)
    {
        _refcounts.ApplyFrees(batch.Frees, batch.RetiredTables);
        _l2.Trim();
        _refcounts.Trim();
    }

    /// <summary>The overlap check of one pass's blocks (under the metadata lock).</summary>
    private IoStatus CheckBatch(Batch batch)
    {
        IoStatus status = IoStatus.Ok;
        foreach (var (offset, copy, _) in batch.RefBlocks)
        {
            status = status == IoStatus.Ok ? CheckOverlap(offset, copy.Length, MetadataKind.RefcountBlock, "a refcount block") : status;
        }
        foreach (var (offset, copy) in batch.RefTableRuns)
        {
            status = status == IoStatus.Ok ? CheckOverlap(offset, copy.Length, MetadataKind.RefcountTable, "the refcount table") : status;
        }
        foreach (var (offset, copy, _) in batch.L2Tables)
        {
            status = status == IoStatus.Ok ? CheckOverlap(offset, copy.Length, MetadataKind.L2Table, "an L2 table") : status;
        }
        foreach (var (offset, copy) in batch.L1Runs)
        {
            status = status == IoStatus.Ok ? CheckOverlap(offset, copy.Length, MetadataKind.L1Table, "the L1 table") : status;
        }
        return status;
    }

    private AlignedBlock RentCopy() => _writeBackSpares.TryPop(out AlignedBlock? spare) ? spare : new AlignedBlock(_clusterSize);

    private void Recycle(AlignedBlock copy)
    {
        if (_writeBackSpares.Count < 64)
        {
            _writeBackSpares.Push(copy);
        }
        else
        {
            copy.Dispose();
        }
    }

    private static AlignedBlock CopyOf(AlignedBlock source, int start, int length)
    {
        AlignedBlock copy = new(length);
        source.Span.Slice(start, length).CopyTo(copy.Span);
        return copy;
    }

    /// <summary>Writes blocks sorted by offset, merging neighbours into one vectored write.</summary>
    private IoStatus WriteBlocks(List<(long Offset, AlignedBlock Block)> blocks)
    {
        const int MaximumRun = 64;
        IoBuffer[] run = new IoBuffer[MaximumRun];
        int i = 0;
        while (i < blocks.Count)
        {
            long start = blocks[i].Offset;
            long next = start;
            int count = 0;
            while (i < blocks.Count && count < MaximumRun && blocks[i].Offset == next)
            {
                run[count++] = blocks[i].Block.AsIoBuffer();
                next += blocks[i].Block.Length;
                i++;
            }
            IoStatus status = _overlay.Write(start, run.AsSpan(0, count));
            if (status != IoStatus.Ok)
            {
                return status;
            }
        }
        return IoStatus.Ok;
    }

    /// <summary>Writes <paramref name="count"/> blocks from <paramref name="first"/>, sorted by offset, merging neighbours into one vectored write; allocates nothing.</summary>
    private IoStatus WriteBlocks(List<(long Offset, AlignedBlock Copy, int Length)> blocks, int first, int count)
    {
        const int MaximumRun = 64;
        Span<IoBuffer> run = stackalloc IoBuffer[MaximumRun];
        int i = first;
        int end = first + count;
        while (i < end)
        {
            long start = blocks[i].Offset;
            long next = start;
            int length = 0;
            while (i < end && length < MaximumRun && blocks[i].Offset == next)
            {
                run[length++] = blocks[i].Copy.AsIoBuffer(0, blocks[i].Length);
                next += blocks[i].Length;
                i++;
            }
            IoStatus status = _overlay.Write(start, run[..length]);
            if (status != IoStatus.Ok)
            {
                return status;
            }
        }
        return IoStatus.Ok;
    }
}
