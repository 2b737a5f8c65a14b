using System.Buffers;
using XenDisk.Cow.Policies;
using XenDisk.Storage;

namespace XenDisk.Cow.Bitmap;

public sealed partial class BitmapOverlay
{
    private enum Source : byte
    {
        Overlay,
        Base,
        Zeros,
    }

    private static Source SourceOf(GrainState state) => state switch
    {
        GrainState.Mapped => Source.Overlay,
        GrainState.Base => Source.Base,
        _ => Source.Zeros,
    };

    public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        if (IsDisposed)
        {
            return IoStatus.IoError;
        }
        IoStatus status = IoRange.Check(offset, buffers, _virtualSize, Info.LogicalSectorSize, out long total);
        if (status != IoStatus.Ok || total == 0)
        {
            return status;
        }
        IoBuffer[]? rented = null;
        Span<IoBuffer> piece = buffers.Length <= StackPieces ? stackalloc IoBuffer[StackPieces] : (rented = ArrayPool<IoBuffer>.Shared.Rent(buffers.Length));
        try
        {
            ScatterCursor cursor = new(buffers);
            long position = offset;
            long end = offset + total;
            while (position < end)
            {
                // One run: consecutive grains whose data comes from the same place, read in one I/O.
                long grain = position >> _grainShift;
                Source source = SourceOf(_map.Get(grain));
                long runEnd = Math.Min(GrainEnd(grain), end);
                while (runEnd < end && SourceOf(_map.Get(runEnd >> _grainShift)) == source)
                {
                    runEnd = Math.Min(GrainEnd(runEnd >> _grainShift), end);
                }
                int count = cursor.Take(runEnd - position, piece);
                status = source switch
                {
                    Source.Overlay => _cow.Read(_dataOffset + position, piece[..count]),
                    Source.Base => ReadBase(position, runEnd - position, piece[..count]),
                    _ => Zero(piece[..count]),
                };
                if (status != IoStatus.Ok)
                {
                    return status;
                }
                position = runEnd;
            }
            return IoStatus.Ok;
        }
        finally
        {
            if (rented is not null)
            {
                ArrayPool<IoBuffer>.Shared.Return(rented);
            }
        }
    }

    public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers) => WriteRange(offset, buffers, publish: true, out _);

    public IoStatus WriteUnpublished(long offset, ReadOnlySpan<IoBuffer> buffers, out bool publish) => WriteRange(offset, buffers, publish: false, out publish);

    public IoStatus Publish() => PublishesMap ? PublishMap() : IoStatus.Ok;

    /// <summary>Flush and Lazy write a changed map block before the answer; Sync makes it durable anyway; Transient promises nothing.</summary>
    private bool PublishesMap => _policy != MetadataPolicy.Sync && _map.TrackUnwritten;

    /// <summary>A guest write; <paramref name="publish"/> false leaves a changed map block for <see cref="Publish"/> (<paramref name="unpublished"/>).</summary>
    private IoStatus WriteRange(long offset, ReadOnlySpan<IoBuffer> buffers, bool publish, out bool unpublished)
    {
        unpublished = false;
        if (IsDisposed)
        {
            return IoStatus.IoError;
        }
        if (_readOnly)
        {
            return IoStatus.ReadOnly;
        }
        IoStatus status = IoRange.Check(offset, buffers, _virtualSize, Info.LogicalSectorSize, out long total);
        if (status != IoStatus.Ok || total == 0)
        {
            return status;
        }
        IoBuffer[]? rented = null;
        Span<IoBuffer> piece = buffers.Length <= StackPieces ? stackalloc IoBuffer[StackPieces] : (rented = ArrayPool<IoBuffer>.Shared.Rent(buffers.Length));
        bool mapChanged = false;
        try
        {
            ScatterCursor cursor = new(buffers);
            long position = offset;
            long end = offset + total;
            while (position < end && status == IoStatus.Ok)
            {
                long first = position >> _grainShift;
                long stepEnd = Math.Min(end, (first + MaxGrainsPerStep) << _grainShift);
                long last = (stepEnd - 1) >> _grainShift;
                int count = cursor.Take(stepEnd - position, piece);
                LockGrains(first, last);
                try
                {
                    status = WriteLocked(position, stepEnd, piece[..count], ref mapChanged);
                }
                finally
                {
                    UnlockGrains(first, last);
                }
                position = stepEnd;
            }
        }
        finally
        {
            if (rented is not null)
            {
                ArrayPool<IoBuffer>.Shared.Return(rented);
            }
        }
        if (status == IoStatus.Ok && !publish && mapChanged && PublishesMap)
        {
            // The caller gathers this with other requests' changes into one publication (IGroupCommitDevice).
            unpublished = true;
            return status;
        }
        return status == IoStatus.Ok ? CompleteUpdate(mapChanged) : status;
    }

    /// <summary>
    /// Whole grains become DISCARDED (they read zeros); partial grains are written with zeros (after a
    /// copy-up if needed), so their other sectors keep their contents. Secure discard is not
    /// supported: the old data stays in the data area until overwritten.
    /// </summary>
    public IoStatus Discard(long offset, long length, bool secure)
    {
        if (IsDisposed)
        {
            return IoStatus.IoError;
        }
        if (_readOnly)
        {
            return IoStatus.ReadOnly;
        }
        if (!IoRange.IsValid(offset, length, _virtualSize, Info.LogicalSectorSize))
        {
            return IoStatus.OutOfRange;
        }
        if (secure)
        {
            return IoStatus.NotSupported;
        }
        IoStatus status = IoStatus.Ok;
        bool mapChanged = false;
        long position = offset;
        long end = offset + length;
        while (position < end && status == IoStatus.Ok)
        {
            long first = position >> _grainShift;
            long stepEnd = Math.Min(end, (first + MaxGrainsPerStep) << _grainShift);
            long last = (stepEnd - 1) >> _grainShift;
            LockGrains(first, last);
            try
            {
                status = DiscardLocked(position, stepEnd, ref mapChanged);
            }
            finally
            {
                UnlockGrains(first, last);
            }
            position = stepEnd;
        }
        return status == IoStatus.Ok ? CompleteUpdate(mapChanged) : status;
    }

    /// <summary>
    /// Sync: the write's data and map change are durable before it is acknowledged. Flush and Lazy:
    /// a changed map block is written into the file before the answer, not made durable
    /// (<see cref="PublishMap"/>); durability waits for the guest's flush. Transient: nothing.
    /// </summary>
    private IoStatus CompleteUpdate(bool mapChanged)
    {
        if (_policy == MetadataPolicy.Sync)
        {
            return mapChanged ? WriteBack(requiredOnly: false) : FlushCow();
        }
        return mapChanged && PublishesMap ? PublishMap() : IoStatus.Ok;
    }

    /// <summary>
    /// Writes [start, end) (within one locked step) into the data area. A partial first or last grain
    /// not yet in the overlay gets the rest of its contents first (copy-up), so that once the grain
    /// is marked mapped the data area holds all of it. Callers hold the grains' stripe locks.
    /// </summary>
    private IoStatus WriteLocked(long start, long end, ReadOnlySpan<IoBuffer> data, ref bool mapChanged)
    {
        long first = start >> _grainShift;
        long last = (end - 1) >> _grainShift;
        IoStatus status = IoStatus.Ok;
        bool copied = false;
        if ((start > GrainStart(first) || end < GrainEnd(first)) && _map.Get(first) != GrainState.Mapped)
        {
            status = CopyUpAround(first, start, end);
            copied = true;
        }
        if (status == IoStatus.Ok && last != first && end < GrainEnd(last) && _map.Get(last) != GrainState.Mapped)
        {
            status = CopyUpAround(last, start, end);
            copied = true;
        }
        if (status == IoStatus.Ok)
        {
            status = _cow.Write(_dataOffset + start, data);
        }
        if (status != IoStatus.Ok)
        {
            // The map is unchanged, so the grains read as before; what reached the data area of an
            // unmapped grain is invisible and will be overwritten by the next copy-up.
            return status;
        }
        // Only now, with the data complete in the data area, may a reader be sent there.
        if (_map.Set(first, last - first + 1, GrainState.Mapped, required: true, copied) != 0)
        {
            mapChanged = true;
        }
        return IoStatus.Ok;
    }

    private IoStatus DiscardLocked(long start, long end, ref bool mapChanged)
    {
        long first = start >> _grainShift;
        long last = (end - 1) >> _grainShift;
        long wholeFirst = first;
        long wholeLast = last;
        IoStatus status = IoStatus.Ok;
        if (start > GrainStart(first) || end < GrainEnd(first))
        {
            status = ZeroPartOfGrain(first, start, Math.Min(end, GrainEnd(first)), ref mapChanged);
            wholeFirst = first + 1;
        }
        if (status == IoStatus.Ok && last != first && end < GrainEnd(last))
        {
            status = ZeroPartOfGrain(last, GrainStart(last), end, ref mapChanged);
            wholeLast = last - 1;
        }
        if (status != IoStatus.Ok || wholeFirst > wholeLast)
        {
            return status;
        }
        // Lazy may leave a discard's map change for later: until it is written, a crash shows the
        // grain's earlier contents again, which a discard (a hint that the data is unneeded) allows.
        if (_map.Set(wholeFirst, wholeLast - wholeFirst + 1, GrainState.Discarded, required: _policy != MetadataPolicy.Lazy) != 0)
        {
            mapChanged = true;
        }
        if (_passDiscardsDown)
        {
            // Only an optimization (thin storage gets the space back): a failure changes nothing the guest sees.
            long from = GrainStart(wholeFirst);
            _cow.Discard(_dataOffset + from, GrainEnd(wholeLast) - from, secure: false);
        }
        return IoStatus.Ok;
    }

    /// <summary>A partial-grain discard: the part is written with zeros, unless the grain is discarded already.</summary>
    private IoStatus ZeroPartOfGrain(long grain, long start, long end, ref bool mapChanged)
    {
        if (_map.Get(grain) == GrainState.Discarded)
        {
            return IoStatus.Ok;
        }
        IoBuffer zeros = _zeros.AsIoBuffer(0, (int)(end - start));
        return WriteLocked(start, end, new ReadOnlySpan<IoBuffer>(in zeros), ref mapChanged);
    }

    /// <summary>
    /// Copies the parts of <paramref name="grain"/> outside [coveredStart, coveredEnd) into the data
    /// area, from where the grain reads now: the base (zeros past its end) or zeros for a discarded grain.
    /// </summary>
    private IoStatus CopyUpAround(long grain, long coveredStart, long coveredEnd)
    {
        long grainStart = GrainStart(grain);
        long grainEnd = GrainEnd(grain);
        bool fromBase = _map.Get(grain) == GrainState.Base;
        IoStatus status = IoStatus.Ok;
        if (coveredStart > grainStart)
        {
            status = CopyUpPart(grainStart, coveredStart - grainStart, fromBase);
        }
        if (status == IoStatus.Ok && coveredEnd < grainEnd)
        {
            status = CopyUpPart(coveredEnd, grainEnd - coveredEnd, fromBase);
        }
        if (status == IoStatus.Ok && fromBase && grainStart < _baseSize)
        {
            _statistics.CountCopyUps(1, 0); // the bytes are counted by CopyUpPart
        }
        return status;
    }

    private IoStatus CopyUpPart(long start, long length, bool fromBase)
    {
        if (!fromBase || start >= _baseSize)
        {
            IoBuffer zeros = _zeros.AsIoBuffer(0, (int)length);
            return _cow.Write(_dataOffset + start, new ReadOnlySpan<IoBuffer>(in zeros));
        }
        AlignedBuffer scratch = _copyUpBuffers.Rent();
        try
        {
            IoBuffer buffer = new(scratch.Address, (int)length);
            IoStatus status = ReadBase(start, length, new ReadOnlySpan<IoBuffer>(in buffer));
            status = status == IoStatus.Ok ? _cow.Write(_dataOffset + start, new ReadOnlySpan<IoBuffer>(in buffer)) : status;
            if (status == IoStatus.Ok)
            {
                _statistics.CountCopiedBytes(length);
            }
            return status;
        }
        finally
        {
            _copyUpBuffers.Return(scratch);
        }
    }

    /// <summary>Reads [start, start + length) as the base presents it: its data, then zeros past its end (a virtual disk larger than the base).</summary>
    private IoStatus ReadBase(long start, long length, ReadOnlySpan<IoBuffer> buffers)
    {
        if (_base is null)
        {
            // Only a standalone overlay has no base, and it has no grain in the BASE state.
            return IoStatus.IoError;
        }
        if (start + length <= _baseSize)
        {
            return _base.Read(start, buffers);
        }
        ScatterCursor cursor = new(buffers);
        Span<IoBuffer> piece = buffers.Length <= StackPieces ? stackalloc IoBuffer[StackPieces] : new IoBuffer[buffers.Length];
        long fromBase = Math.Max(0, _baseSize - start);
        if (fromBase > 0)
        {
            int count = cursor.Take(fromBase, piece);
            IoStatus status = _base.Read(start, piece[..count]);
            if (status != IoStatus.Ok)
            {
                return status;
            }
        }
        return Zero(piece[..cursor.Take(length - fromBase, piece)]);
    }

    private static IoStatus Zero(ReadOnlySpan<IoBuffer> buffers)
    {
        foreach (IoBuffer buffer in buffers)
        {
            buffer.AsSpan().Clear();
        }
        return IoStatus.Ok;
    }
}
