using XenDisk.Cow.Storage;
using XenDisk.Cow.Policies;
using XenDisk.Storage;

namespace XenDisk.Cow.Bitmap;

public sealed partial class BitmapOverlay
{
    /// <summary>
    /// Set once a flush of the CoW device failed. Storage may drop the writes a failed flush was to
    /// make durable and still report a later flush as successful (Linux marks the pages of a failed
    /// writeback clean), so from then on no flush is reported as successful and the map is never
    /// written again: a map block marking a grain mapped would expose a data area that may have lost
    /// that grain's data. The dirty flag stays set, so the next open reports the unclean shutdown.
    /// </summary>
    private volatile bool _flushFailed;

    /// <summary>
    /// Makes everything acknowledged before this call durable: the data area, then the map blocks
    /// changed since the last write-back (Lazy: those a flush must write). Transient: nothing is
    /// ever durable, so this returns at once.
    /// </summary>
    public IoStatus Flush()
    {
        if (IsDisposed)
        {
            return IoStatus.IoError;
        }
        if (_policy == MetadataPolicy.Transient)
        {
            return IoStatus.Ok;
        }
        if (_readOnly)
        {
            return IoStatus.Ok;
        }
        return WriteBack(requiredOnly: _policy == MetadataPolicy.Lazy);
    }

    /// <summary>
    /// The map write-back, in this order:
    /// 1. snapshot the dirty map blocks (and mark them clean) under the map's gate;
    /// 2. flush the CoW device: the data of every grain in the snapshot is durable, because a grain
    ///    is marked mapped only after its data write completed, which was before the snapshot;
    /// 3. write the snapshot, adjacent blocks in one I/O, each block once however many writes changed it;
    /// 4. flush again, so the map is durable when the caller's flush completes.
    /// A failure puts the blocks back into the dirty set; what reached the disk is consistent either
    /// way (every block on disk is an older or newer snapshot, each valid for its moment).
    /// </summary>
    private IoStatus WriteBack(bool requiredOnly)
    {
        if (_policy == MetadataPolicy.Transient)
        {
            return IoStatus.Ok;
        }
        // Group commit: a pass that begins after this point flushes this caller's data and writes
        // its map blocks, so if one has already completed while this caller waited for the lock,
        // the caller is done. Concurrent sync writes and flushes then share passes and their flushes.
        long covering = Interlocked.Read(ref _passesBegun) + 1;
        lock (_writeBackLock)
        {
            if (_flushFailed)
            {
                return IoStatus.IoError;
            }
            if ((requiredOnly ? _lastPassCoveringRequired : _lastPassCoveringAll) >= covering)
            {
                _statistics.CountSharedWriteBack();
                return IoStatus.Ok;
            }
            long pass = Interlocked.Increment(ref _passesBegun);
            IoStatus status = WriteBackPass(requiredOnly);
            if (status == IoStatus.Ok)
            {
                _lastPassCoveringRequired = pass;
                if (!requiredOnly)
                {
                    _lastPassCoveringAll = pass;
                }
            }
            return status;
        }
    }

    /// <summary>Passes begun (numbered under the write-back lock, before they take any dirty block).</summary>
    private long _passesBegun;

    /// <summary>The last successful pass that wrote every dirty block; and the last that wrote at least those a flush requires (Lazy).</summary>
    private long _lastPassCoveringAll, _lastPassCoveringRequired;

    /// <summary>One pass; the caller holds the write-back lock.</summary>
    private IoStatus WriteBackPass(bool requiredOnly)
    {
        {
            int blocks;
            lock (_map.Gate)
            {
                _map.TakeDirtyLocked(requiredOnly, _takenBlocks);
                // The flush below covers the data of every grain mapped so far.
                _map.DataFirstPending = false;
                blocks = StageTakenBlocksLocked();
            }
            IoStatus status = FlushCow();
            _statistics.CountMetadataFlush();
            if (blocks == 0 || status != IoStatus.Ok)
            {
                if (blocks > 0)
                {
                    _map.RestoreDirty(_takenBlocks);
                }
                return status;
            }
            status = WriteStaged(blocks);
            if (status == IoStatus.Ok)
            {
                status = FlushCow();
                _statistics.CountMetadataFlush();
            }
            if (status != IoStatus.Ok)
            {
                _map.RestoreDirty(_takenBlocks);
            }
            return status;
        }
    }

    /// <summary>
    /// Map before the answer (Flush and Lazy): the map blocks a request changed are written into the
    /// file before it is answered, without a flush, so that a crash of the service (SIGKILL, OOM
    /// killer; the guest keeps running and the kernel's page cache survives) loses no answered
    /// write: the next instance reads the grain as mapped. Each changed block is written once,
    /// adjacent blocks in one I/O; a request that changed no map block costs nothing.
    /// <para>
    /// A power loss may keep such a block without the data it marks. For grains the request wrote
    /// whole that is the guest's own unflushed data, which the guest was never promised; a grain
    /// completed by a copy-up also holds bytes the guest never wrote (the base's, or zeros), so a
    /// copy-up makes the next publication flush the data first (<see cref="GrainMap.DataFirstPending"/>),
    /// as the write-back pass does. What a guest flush made durable is never changed. Serialised
    /// with passes by the write-back lock, so a pass's older snapshot never lands after a newer block.
    /// </para>
    /// </summary>
    private IoStatus PublishMap()
    {
        lock (_writeBackLock)
        {
            if (_flushFailed)
            {
                return IoStatus.IoError;
            }
            int blocks;
            bool dataFirst;
            lock (_map.Gate)
            {
                _map.TakeUnwrittenLocked(_takenBlocks);
                dataFirst = _map.DataFirstPending;
                _map.DataFirstPending = false;
                blocks = StageTakenBlocksLocked();
            }
            if (blocks == 0)
            {
                return IoStatus.Ok;
            }
            IoStatus status = IoStatus.Ok;
            if (dataFirst)
            {
                status = FlushCow();
                _statistics.CountMetadataFlush();
            }
            status = status == IoStatus.Ok ? WriteStaged(blocks) : status;
            if (status != IoStatus.Ok)
            {
                // They stay dirty (a pass writes them again); a failed write leaves the file as a crash would.
                _map.RestoreDirty(_takenBlocks);
            }
            return status;
        }
    }

    /// <summary>Writes the first <paramref name="blocks"/> staged map blocks (<see cref="_takenBlocks"/>), adjacent ones in one I/O.</summary>
    private IoStatus WriteStaged(int blocks)
    {
        IoStatus status = IoStatus.Ok;
        int runStart = 0;
        for (int i = 1; i <= blocks && status == IoStatus.Ok; i++)
        {
            if (i < blocks && _takenBlocks[i] == _takenBlocks[i - 1] + 1)
            {
                continue;
            }
            long deviceOffset = _header.BitmapOffset + (long)_takenBlocks[runStart] * BitmapFormat.MapBlockSize;
            IoBuffer buffer = _staging!.AsIoBuffer(checked(runStart * BitmapFormat.MapBlockSize), (i - runStart) * BitmapFormat.MapBlockSize);
            status = _cow.Write(deviceOffset, new ReadOnlySpan<IoBuffer>(in buffer));
            _statistics.CountMetadataWrites(i - runStart);
            runStart = i;
        }
        return status;
    }

    /// <summary>Flushes the CoW device; a failure is remembered (see <see cref="_flushFailed"/>).</summary>
    private IoStatus FlushCow()
    {
        if (_flushFailed)
        {
            return IoStatus.IoError;
        }
        IoStatus status = _cow.Flush();
        if (status != IoStatus.Ok)
        {
            _flushFailed = true;
        }
        return status;
    }

    /// <summary>
    /// Copies the map blocks just taken (<c>_takenBlocks</c>) into the staging buffer, in order, so
    /// that they can be written after the map's lock is released; returns how many. Caller holds
    /// the map's gate.
    /// </summary>
    private int StageTakenBlocksLocked()
    {
        int blocks = _takenBlocks.Count;
        if (blocks == 0)
        {
            return 0;
        }
        long needed = (long)blocks * BitmapFormat.MapBlockSize;
        if (_staging is null || _staging.Length < needed)
        {
            _staging?.Dispose();
            _staging = new AlignedBlock(checked((int)needed));
        }
        for (int i = 0; i < blocks; i++)
        {
            _map.BlockLocked(_takenBlocks[i]).CopyTo(_staging.Slice(checked(i * BitmapFormat.MapBlockSize), BitmapFormat.MapBlockSize));
        }
        return blocks;
    }
}
