using XenDisk.Cow.Storage;
using XenDisk.Storage;
using XenDisk.Cow.Overlays;

namespace XenDisk.Cow.Qcow2;

// Commit: writing the overlay's own data down into its backing image.
public sealed partial class Qcow2Image
{
    /// <summary>Guest bytes committed per step; with <see cref="Qcow2CommitOptions.EmptyOverlay"/> the backing image is flushed once per step.</summary>
    private const long CommitStepBytes = 16L * 1024 * 1024;

    /// <summary>
    /// Writes what the overlay stores (data, and zeros for zero clusters or subclusters) into the
    /// backing image at the same guest offsets, then flushes it: afterwards the backing image alone
    /// reads like the virtual disk did. The backing device must have been opened writable and be at
    /// least as large as the virtual disk; anything else sharing that backing image sees the change.
    /// <para>
    /// With <see cref="Qcow2CommitOptions.EmptyOverlay"/> every cluster of the overlay is then
    /// deallocated, so that it reads through again. Each step's data is durable in the backing image
    /// before the entries of that step are cleared (under the clusters' stripe locks, so a guest write
    /// racing the commit is never lost), and the cleared entries reach the disk in the engine's
    /// crash-safe order: a crash leaves either the overlay's data or the committed backing data in place.
    /// </para>
    /// Throws <see cref="InvalidOperationException"/> when there is no writable backing image of the
    /// full size; cancellation throws <see cref="OperationCanceledException"/> between steps.
    /// </summary>
    public OverlayOperationResult Commit(Qcow2CommitOptions? options = null, CancellationToken cancellationToken = default)
    {
        options ??= new Qcow2CommitOptions();
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        if (BackingFile == null || _backing == null)
        {
            throw new InvalidOperationException("The image has no backing image to commit into.");
        }
        if (_backing.Info.ReadOnly)
        {
            throw new InvalidOperationException($"Committing needs the backing image opened writable ({_backing.Info.Description} is read-only).");
        }
        if (_backing.Info.SizeBytes < _virtualSize)
        {
            throw new InvalidOperationException($"The backing image ({_backing.Info.SizeBytes} bytes) is smaller than the virtual disk ({_virtualSize} bytes); it cannot hold the committed data.");
        }
        if (options.EmptyOverlay && ReadOnly)
        {
            return Failed(IoStatus.ReadOnly, "emptying the overlay needs it open for writing" + (ReadOnlyReason != null ? $" ({ReadOnlyReason})" : ""));
        }
        if (_failure != null)
        {
            return Failed(IoStatus.IoError, _failure);
        }
        lock (_maintenanceLock)
        {
            long clusters = (_virtualSize + _clusterSize - 1) >> _clusterBits;
            // Consecutive clusters fall on distinct stripes, so a step never needs one stripe twice.
            long step = Math.Clamp(CommitStepBytes >> _clusterBits, 1, StripeCount);
            long copied = 0;
            for (long first = 0; first < clusters; first += step)
            {
                cancellationToken.ThrowIfCancellationRequested();
                long end = Math.Min(clusters, first + step);
                IoStatus status = options.EmptyOverlay ? CommitAndEmptyStep(first, end, ref copied) : CommitStep(first, end, ref copied);
                if (status != IoStatus.Ok)
                {
                    return Failed(status, Explain(status, $"committing guest clusters {first} to {end - 1}")) with { BytesExamined = first << _clusterBits, BytesCopied = copied };
                }
                options.Progress?.Invoke(Math.Min(_virtualSize, end << _clusterBits), _virtualSize);
            }
            IoStatus final = _backing.Flush();
            if (final == IoStatus.Ok && options.EmptyOverlay)
            {
                final = Flush();
            }
            return new OverlayOperationResult
            {
                Status = final,
                BytesExamined = _virtualSize,
                BytesCopied = copied,
                Error = final == IoStatus.Ok ? null : Explain(final, "flushing after the commit"),
            };
        }
    }

    /// <summary>Copies clusters [first, end) into the backing image, each under its stripe's read lock.</summary>
    private IoStatus CommitStep(long first, long end, ref long copied)
    {
        for (long cluster = first; cluster < end; cluster++)
        {
            ReaderWriterLockSlim stripe = StripeFor(cluster);
            stripe.EnterReadLock();
            IoStatus status;
            try
            {
                status = CommitCluster(cluster, ref copied);
            }
            finally
            {
                stripe.ExitReadLock();
            }
            if (status != IoStatus.Ok)
            {
                return status;
            }
        }
        return IoStatus.Ok;
    }

    /// <summary>
    /// Copies clusters [first, end) into the backing image, flushes it, and deallocates them in the
    /// overlay, holding all their stripes exclusively throughout (taken in ascending stripe order;
    /// every other path holds at most one stripe, so this cannot deadlock).
    /// </summary>
    private IoStatus CommitAndEmptyStep(long first, long end, ref long copied)
    {
        int count = (int)(end - first);
        int[] order = new int[count];
        for (int i = 0; i < count; i++)
        {
            order[i] = (int)((ulong)(first + i) % StripeCount);
        }
        Array.Sort(order);
        foreach (int index in order)
        {
            _stripes[index].EnterWriteLock();
            _leases.Bar(index, 1);
        }
        IoStatus status = IoStatus.Ok;
        bool metadataChanged = false;
        try
        {
            for (long cluster = first; cluster < end && status == IoStatus.Ok; cluster++)
            {
                status = CommitCluster(cluster, ref copied);
            }
            if (status == IoStatus.Ok)
            {
                // The backing image holds the data durably before any entry says "read it from there".
                status = _backing!.Flush();
            }
            lock (_metadataLock)
            {
                for (long cluster = first; cluster < end && status == IoStatus.Ok; cluster++)
                {
                    status = DeallocateCluster(cluster, ref metadataChanged);
                }
            }
        }
        finally
        {
            foreach (int index in order)
            {
                _leases.Unbar(index, 1);
                _stripes[index].ExitWriteLock();
            }
        }
        return AfterMetadataChange(status, metadataChanged);
    }

    /// <summary>Writes one cluster's data and zero units into the backing image; the caller holds its stripe.</summary>
    private IoStatus CommitCluster(long guestCluster, ref long copied)
    {
        IoStatus status = LookupEntryLocked(guestCluster, out L2Entry entry);
        if (status != IoStatus.Ok)
        {
            return status;
        }
        if (entry.Compressed)
        {
            _lastError = $"guest cluster {guestCluster} is compressed; compressed clusters cannot be committed (convert the image with 'qemu-img convert' first)";
            return IoStatus.IoError;
        }
        long host = entry.HostOffset;
        if (host != 0)
        {
            lock (_metadataLock)
            {
                status = CheckDataCluster(guestCluster, entry with { Word = entry.Word | Qcow2Format.OflagCopied });
            }
            if (status != IoStatus.Ok)
            {
                return status;
            }
        }
        long clusterStart = guestCluster << _clusterBits;
        int clusterLength = (int)Math.Min(_clusterSize, _virtualSize - clusterStart);
        int units = (clusterLength + _unitSize - 1) >> _unitBits;
        AlignedBuffer buffer = default;
        bool rented = false;
        try
        {
            int unit = 0;
            while (unit < units)
            {
                UnitState state = StateOf(entry, unit);
                if (state is UnitState.Compressed or UnitState.Invalid)
                {
                    _lastError = $"guest cluster {guestCluster} is compressed or has an invalid L2 entry (0x{entry.Word:x16}); it cannot be committed";
                    return IoStatus.IoError;
                }
                int runEnd = unit + 1;
                while (runEnd < units && StateOf(entry, runEnd) == state)
                {
                    runEnd++;
                }
                int start = unit << _unitBits;
                int length = Math.Min(runEnd << _unitBits, clusterLength) - start;
                if (state == UnitState.Data)
                {
                    if (!rented)
                    {
                        buffer = _scratch.Rent();
                        rented = true;
                    }
                    IoBuffer data = new(buffer.Address, length);
                    status = _overlay.Read(host + start, new ReadOnlySpan<IoBuffer>(in data));
                    if (status == IoStatus.Ok)
                    {
                        status = _backing!.Write(clusterStart + start, new ReadOnlySpan<IoBuffer>(in data));
                    }
                }
                else if (state == UnitState.Zero)
                {
                    IoBuffer zeros = new(_zeros.Address, length);
                    status = _backing!.Write(clusterStart + start, new ReadOnlySpan<IoBuffer>(in zeros));
                }
                if (status != IoStatus.Ok)
                {
                    return status == IoStatus.OutOfRange ? IoStatus.IoError : status;
                }
                if (state != UnitState.Unallocated)
                {
                    copied += length;
                }
                unit = runEnd;
            }
            return IoStatus.Ok;
        }
        finally
        {
            if (rented)
            {
                _scratch.Return(buffer);
            }
        }
    }

    /// <summary>
    /// Makes the whole cluster read through to the backing image again (under the metadata lock):
    /// the entry becomes empty and its host cluster is freed after the next write-back.
    /// </summary>
    private IoStatus DeallocateCluster(long guestCluster, ref bool metadataChanged)
    {
        IoStatus status = GetL2Table(guestCluster, allocate: false, out MetadataCache.Entry? table, out int index);
        if (status != IoStatus.Ok || table == null)
        {
            return status;
        }
        L2Entry entry = _l2.Read(table, index);
        if (entry == default)
        {
            return IoStatus.Ok;
        }
        if (entry.HostOffset != 0 && !entry.Copied)
        {
            return RefuseRequest($"emptying guest cluster {guestCluster}: the data cluster may be shared (no COPIED flag)");
        }
        _l2.Write(table, index, default);
        metadataChanged = true;
        if (entry.HostOffset != 0)
        {
            // Reused only after the cleared entry is on disk (see WriteBackCore).
            _refcounts.FreeAfterWriteBack(entry.HostOffset);
        }
        return IoStatus.Ok;
    }
}
