using XenDisk.Cow.Storage;
using System.Diagnostics;
using XenDisk.Cow.Policies;
using XenDisk.Storage;

namespace XenDisk.Cow.Bitmap;

public sealed partial class BitmapOverlay
{
    /// <summary>Bytes moved per I/O by hydration and commit.</summary>
    private const int MaintenanceBufferSize = 1024 * 1024;

    /// <summary>The longest a throttled run sleeps at once, so cancellation is noticed promptly.</summary>
    private const int MaximumThrottleSleepMilliseconds = 250;

    /// <summary>
    /// Copies every grain still read from the base into the overlay, so that the overlay no longer
    /// needs its base; then sets the header's STANDALONE flag. Runs alongside guest I/O (grain by
    /// grain under the same locks as writes). Resumable: the map is written back every
    /// <see cref="HydrateOptions.CheckpointBytes"/>, and a re-run after an interruption (a crash,
    /// cancellation) copies only the grains the map still records as the base's. Grains wholly past
    /// the end of the base become DISCARDED (they read zeros either way) without any copying.
    /// Cancellation writes the map back, then throws <see cref="OperationCanceledException"/>.
    /// </summary>
    public IoStatus Hydrate(HydrateOptions? options = null, CancellationToken cancellationToken = default)
    {
        options ??= new HydrateOptions();
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        if (_readOnly)
        {
            return IoStatus.ReadOnly;
        }
        if (IsStandalone)
        {
            return IoStatus.Ok;
        }
        long grainCount = _map.GrainCount;
        long copied = 0;
        long sinceCheckpoint = 0;
        _statistics.ReportHydration(0, _virtualSize);
        Stopwatch clock = Stopwatch.StartNew();
        using AlignedBlock buffer = new(MaintenanceBufferSize);
        long grain = 0;
        while (grain < grainCount)
        {
            if (cancellationToken.IsCancellationRequested)
            {
                WriteBack(requiredOnly: false);
                cancellationToken.ThrowIfCancellationRequested();
            }
            long stepEnd = Math.Min(grainCount, grain + MaxGrainsPerStep);
            LockGrains(grain, stepEnd - 1);
            IoStatus status;
            long stepCopied = 0;
            try
            {
                status = HydrateLocked(grain, stepEnd, buffer, ref stepCopied);
            }
            finally
            {
                UnlockGrains(grain, stepEnd - 1);
            }
            if (status != IoStatus.Ok)
            {
                WriteBack(requiredOnly: false);
                return status;
            }
            copied += stepCopied;
            sinceCheckpoint += stepCopied;
            grain = stepEnd;
            _statistics.CountCopiedBytes(stepCopied);
            _statistics.ReportHydration(Math.Min(GrainStart(grain), _virtualSize), _virtualSize);
            if (sinceCheckpoint >= options.CheckpointBytes)
            {
                status = WriteBack(requiredOnly: false);
                if (status != IoStatus.Ok)
                {
                    return status;
                }
                sinceCheckpoint = 0;
            }
            options.Progress?.Invoke(new GrainProgress(grain, grainCount, copied));
            Throttle(clock, copied, options.BytesPerSecond, cancellationToken);
        }
        // The map (every grain mapped or discarded) must be durable before the flag that says so.
        IoStatus final = WriteBack(requiredOnly: false);
        if (final != IoStatus.Ok || _policy == MetadataPolicy.Transient)
        {
            return final;
        }
        final = WriteHeader(Volatile.Read(ref _compatibleFeatures) | BitmapFormat.CompatibleStandalone);
        if (final != IoStatus.Ok)
        {
            return final;
        }
        _statistics.CountMetadataFlush();
        return _cow.Flush();
    }

    private IoStatus HydrateLocked(long first, long end, AlignedBlock buffer, ref long copied)
    {
        long grain = first;
        while (grain < end)
        {
            if (_map.Get(grain) != GrainState.Base)
            {
                grain++;
                continue;
            }
            long runEnd = grain + 1;
            while (runEnd < end && _map.Get(runEnd) == GrainState.Base)
            {
                runEnd++;
            }
            long start = GrainStart(grain);
            long stop = GrainEnd(runEnd - 1);
            if (start >= _baseSize)
            {
                _map.Set(grain, runEnd - grain, GrainState.Discarded, required: true);
                grain = runEnd;
                continue;
            }
            for (long at = start; at < stop; at += MaintenanceBufferSize)
            {
                int length = (int)Math.Min(MaintenanceBufferSize, stop - at);
                IoBuffer piece = buffer.AsIoBuffer(0, length);
                ReadOnlySpan<IoBuffer> pieces = new(in piece);
                IoStatus status = ReadBase(at, length, pieces);
                if (status == IoStatus.Ok)
                {
                    status = _cow.Write(_dataOffset + at, pieces);
                }
                if (status != IoStatus.Ok)
                {
                    return status;
                }
                copied += length;
            }
            _map.Set(grain, runEnd - grain, GrainState.Mapped, required: true, copied: true);
            grain = runEnd;
        }
        return IoStatus.Ok;
    }

    private static void Throttle(Stopwatch clock, long bytes, long bytesPerSecond, CancellationToken cancellationToken)
    {
        if (bytesPerSecond <= 0)
        {
            return;
        }
        double dueSeconds = (double)bytes / bytesPerSecond;
        double ahead = dueSeconds - clock.Elapsed.TotalSeconds;
        if (ahead > 0)
        {
            int milliseconds = (int)Math.Min(ahead * 1000, MaximumThrottleSleepMilliseconds);
            cancellationToken.WaitHandle.WaitOne(milliseconds);
        }
    }

    /// <summary>
    /// Writes the virtual disk's differences into the base: every mapped grain's data, and zeros for
    /// every discarded grain; then flushes the base. The base device must be writable and as large as
    /// the virtual disk. With <see cref="CommitOptions.ClearOverlay"/> every grain then reads from the
    /// base again: each step is copied and the base flushed before its grains are marked BASE, under
    /// the grains' locks, so concurrent guest writes are never lost; afterwards the overlay is not standalone.
    /// Throws <see cref="InvalidOperationException"/> when there is no writable base of the full size.
    /// </summary>
    public IoStatus Commit(CommitOptions? options = null)
    {
        options ??= new CommitOptions();
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        if (_base is null || _base.Info.ReadOnly)
        {
            throw new InvalidOperationException("Committing needs the base device opened writable.");
        }
        if (_baseSize < _virtualSize)
        {
            throw new InvalidOperationException($"The base ({_baseSize} bytes) is smaller than the virtual disk ({_virtualSize} bytes); it cannot hold the committed data.");
        }
        if (options.ClearOverlay && _readOnly)
        {
            return IoStatus.ReadOnly;
        }
        long grainCount = _map.GrainCount;
        long copied = 0;
        using AlignedBlock buffer = new(MaintenanceBufferSize);
        for (long grain = 0; grain < grainCount;)
        {
            long stepEnd = Math.Min(grainCount, grain + MaxGrainsPerStep);
            LockGrains(grain, stepEnd - 1);
            IoStatus status;
            try
            {
                status = CommitLocked(grain, stepEnd, buffer, ref copied);
                if (status == IoStatus.Ok && options.ClearOverlay)
                {
                    // The base must hold the data durably before any map block says BASE.
                    status = _base.Flush();
                    if (status == IoStatus.Ok)
                    {
                        _map.Set(grain, stepEnd - grain, GrainState.Base, required: true);
                    }
                }
            }
            finally
            {
                UnlockGrains(grain, stepEnd - 1);
            }
            if (status != IoStatus.Ok)
            {
                return status;
            }
            grain = stepEnd;
            options.Progress?.Invoke(new GrainProgress(grain, grainCount, copied));
        }
        IoStatus final = _base.Flush();
        if (final != IoStatus.Ok || !options.ClearOverlay)
        {
            return final;
        }
        final = WriteBack(requiredOnly: false);
        if (final != IoStatus.Ok || _policy == MetadataPolicy.Transient || !IsStandalone)
        {
            return final;
        }
        final = WriteHeader(Volatile.Read(ref _compatibleFeatures) & ~BitmapFormat.CompatibleStandalone);
        if (final != IoStatus.Ok)
        {
            return final;
        }
        _statistics.CountMetadataFlush();
        return _cow.Flush();
    }

    private IoStatus CommitLocked(long first, long end, AlignedBlock buffer, ref long copied)
    {
        long grain = first;
        while (grain < end)
        {
            GrainState state = _map.Get(grain);
            if (state == GrainState.Base)
            {
                grain++;
                continue;
            }
            long runEnd = grain + 1;
            while (runEnd < end && _map.Get(runEnd) == state)
            {
                runEnd++;
            }
            long start = GrainStart(grain);
            long stop = GrainEnd(runEnd - 1);
            for (long at = start; at < stop; at += MaintenanceBufferSize)
            {
                int length = (int)Math.Min(MaintenanceBufferSize, stop - at);
                IoBuffer piece = state == GrainState.Mapped ? buffer.AsIoBuffer(0, length) : ZeroBuffer(buffer, length);
                ReadOnlySpan<IoBuffer> pieces = new(in piece);
                IoStatus status = state == GrainState.Mapped ? _cow.Read(_dataOffset + at, pieces) : IoStatus.Ok;
                if (status == IoStatus.Ok)
                {
                    status = _base!.Write(at, pieces);
                }
                if (status != IoStatus.Ok)
                {
                    return status;
                }
                copied += length;
            }
            grain = runEnd;
        }
        return IoStatus.Ok;

        static IoBuffer ZeroBuffer(AlignedBlock block, int length)
        {
            block.Slice(0, length).Clear();
            return block.AsIoBuffer(0, length);
        }
    }
}
