using XenDisk.Cow.Policies;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

public sealed partial class Qcow2Image
{
    /// <summary>Scatter lists up to this many entries are sliced on the stack.</summary>
    private const int StackSliceLimit = 64;

    private volatile string? _lastError;

    /// <summary>The most recent request failure explained (compressed cluster, corruption, the failed state), for logs; null if none.</summary>
    public string? LastError => _lastError;

    private bool IsClosed => Volatile.Read(ref _disposed) != 0;

    public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        if (IsClosed)
        {
            // Closed (its tables and locks released): an error result, never an exception on a ring thread.
            return IoStatus.IoError;
        }
        IoStatus status = IoRange.Check(offset, buffers, _virtualSize, 512, out long length);
        if (status != IoStatus.Ok || length == 0)
        {
            return status;
        }
        Span<IoBuffer> slice = buffers.Length + 2 <= StackSliceLimit ? stackalloc IoBuffer[buffers.Length + 2] : new IoBuffer[buffers.Length + 2];
        foreach (GuestClusterRange.Step step in new GuestClusterRange(offset, length, _clusterBits))
        {
            int count = ScatterList.Slice(buffers, step.Done, step.Length, slice);
            status = ReadInCluster(step.GuestCluster, step.Start, step.Length, slice[..count]);
            if (status != IoStatus.Ok)
            {
                return status;
            }
        }
        return IoStatus.Ok;
    }

    private IoStatus ReadInCluster(long guestCluster, int start, int length, ReadOnlySpan<IoBuffer> data)
    {
        ReaderWriterLockSlim stripe = StripeFor(guestCluster);
        stripe.EnterReadLock();
        try
        {
            IoStatus status = LookupEntryLocked(guestCluster, out L2Entry entry);
            if (status != IoStatus.Ok)
            {
                return status;
            }
            if (entry.Compressed)
            {
                return ReadFromCompressed(guestCluster, entry, start, length, data);
            }
            Span<IoBuffer> part = data.Length <= StackSliceLimit ? stackalloc IoBuffer[data.Length] : new IoBuffer[data.Length];
            long clusterStart = guestCluster << _clusterBits;
            int position = start;
            int end = start + length;
            while (position < end)
            {
                // A run of units in the same state is served by one I/O.
                int unit = position >> _unitBits;
                UnitState state = StateOf(entry, unit);
                int runEnd = Math.Min(end, (unit + 1) << _unitBits);
                while (runEnd < end && StateOf(entry, runEnd >> _unitBits) == state)
                {
                    runEnd = Math.Min(end, ((runEnd >> _unitBits) + 1) << _unitBits);
                }
                int count = ScatterList.Slice(data, position - start, runEnd - position, part);
                ReadOnlySpan<IoBuffer> target = part[..count];
                switch (state)
                {
                    case UnitState.Data:
                        status = _overlay.Read(entry.HostOffset + position, target);
                        break;
                    case UnitState.Zero:
                        ScatterList.Clear(target);
                        break;
                    case UnitState.Unallocated:
                        status = ReadBacking(clusterStart + position, runEnd - position, target);
                        break;
                    default:
                        _lastError = $"guest cluster {guestCluster} has an invalid L2 entry (0x{entry.Word:x16}, bitmap 0x{entry.Bitmap:x16})";
                        return IoStatus.IoError;
                }
                if (status != IoStatus.Ok)
                {
                    return status == IoStatus.OutOfRange ? IoStatus.IoError : status;
                }
                position = runEnd;
            }
            return IoStatus.Ok;
        }
        finally
        {
            stripe.ExitReadLock();
        }
    }

    /// <summary>Reads the backing device; past its end (or without one) the range reads as zeros (== Cluster mapping ==).</summary>
    private IoStatus ReadBacking(long guestOffset, long length, ReadOnlySpan<IoBuffer> target)
    {
        long backingSize = _backing?.Info.SizeBytes ?? 0;
        if (guestOffset >= backingSize)
        {
            ScatterList.Clear(target);
            return IoStatus.Ok;
        }
        if (length <= backingSize - guestOffset)
        {
            return _backing!.Read(guestOffset, target);
        }
        long inside = backingSize - guestOffset;
        Span<IoBuffer> part = target.Length <= StackSliceLimit ? stackalloc IoBuffer[target.Length] : new IoBuffer[target.Length];
        int count = ScatterList.Slice(target, 0, inside, part);
        IoStatus status = _backing!.Read(guestOffset, part[..count]);
        count = ScatterList.Slice(target, inside, length - inside, part);
        ScatterList.Clear(part[..count]);
        return status;
    }

    public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers) => WriteRange(offset, buffers, publish: true, out _);

    public IoStatus WriteUnpublished(long offset, ReadOnlySpan<IoBuffer> buffers, out bool publish) => WriteRange(offset, buffers, publish: false, out publish);

    public IoStatus Publish() => PublishesMetadata ? PublishMetadata() : IoStatus.Ok;

    /// <summary>A guest write; <paramref name="publish"/> false leaves a changed mapping for <see cref="Publish"/> (<paramref name="unpublished"/>).</summary>
    private IoStatus WriteRange(long offset, ReadOnlySpan<IoBuffer> buffers, bool publish, out bool unpublished)
    {
        unpublished = false;
        if (IsClosed)
        {
            // Closed (its tables and locks released): an error result, never an exception on a ring thread.
            return IoStatus.IoError;
        }
        if (ReadOnly)
        {
            return IoStatus.ReadOnly;
        }
        IoStatus status = IoRange.Check(offset, buffers, _virtualSize, 512, out long length);
        if (status != IoStatus.Ok || length == 0)
        {
            return status;
        }
        if (_failure != null)
        {
            return IoStatus.IoError;
        }
        MarkBitmapsDirty(offset, length);
        Span<IoBuffer> slice = buffers.Length + 2 <= StackSliceLimit ? stackalloc IoBuffer[buffers.Length + 2] : new IoBuffer[buffers.Length + 2];
        bool metadataChanged = false;
        foreach (GuestClusterRange.Step step in new GuestClusterRange(offset, length, _clusterBits))
        {
            int count = ScatterList.Slice(buffers, step.Done, step.Length, slice);
            ReaderWriterLockSlim stripe = StripeFor(step.GuestCluster);
            EnterExclusive(stripe, step.GuestCluster);
            try
            {
                status = WriteInCluster(step.GuestCluster, step.Start, step.Length, slice[..count], ref metadataChanged);
            }
            finally
            {
                ExitExclusive(stripe, step.GuestCluster);
            }
            if (status != IoStatus.Ok)
            {
                break;
            }
        }
        return AfterMetadataChange(status, metadataChanged, publish, out unpublished);
    }

    /// <summary>
    /// Sync makes the request durable before acknowledging it: its metadata and, because the device
    /// then reports no volatile cache (the guest will not flush), its data too, even when rewriting
    /// in place changed no metadata. Any policy writes back when the caches are over budget. Flush
    /// and Lazy then write the request's changed mapping into the file before it is answered
    /// (<see cref="PublishMetadata"/>), so that it outlives a crash of the service.
    /// </summary>
    private IoStatus AfterMetadataChange(IoStatus status, bool metadataChanged, bool publish = true) =>
        AfterMetadataChange(status, metadataChanged, publish, out _);

    /// <summary><paramref name="unpublished"/>: the mapping changed and <paramref name="publish"/> was false, so it waits for a <see cref="Publish"/>.</summary>
    private IoStatus AfterMetadataChange(IoStatus status, bool metadataChanged, bool publish, out bool unpublished)
    {
        unpublished = false;
        PersistCorruptBitIfPending();
        if (status == IoStatus.Ok && _policy == MetadataPolicy.Sync)
        {
            return WriteBack(forGuestFlush: true);
        }
        if (_l2.NeedsWriteBack || _refcounts.CacheNeedsWriteBack)
        {
            IoStatus writeBack = WriteBack(forGuestFlush: false);
            if (status == IoStatus.Ok)
            {
                status = writeBack;
            }
        }
        if (metadataChanged && PublishesMetadata)
        {
            if (!publish)
            {
                // The caller gathers this with other requests' changes into one publication (IGroupCommitDevice).
                unpublished = true;
                return status;
            }
            // Even for a request that failed part-way: the clusters it did map were written.
            IoStatus published = PublishMetadata();
            if (status == IoStatus.Ok)
            {
                status = published;
            }
        }
        return status;
    }

    /// <summary>
    /// Writes [start, start + length) of one guest cluster, with that cluster's stripe held
    /// exclusively. Units (subclusters or clusters) the write covers only partly and that do not
    /// hold data yet are completed from their source (backing device or zeros) in the same write.
    /// <paramref name="copiedData"/>: the data is not the guest's (hydration copies the base).
    /// </summary>
    private IoStatus WriteInCluster(long guestCluster, int start, int length, ReadOnlySpan<IoBuffer> data, ref bool metadataChanged, bool copiedData = false)
    {
        IoStatus status;
        L2Entry entry;
        lock (_metadataLock)
        {
            // One metadata lock for the lookup and for the checks of the cluster it maps to: the
            // in-place rewrite, the common case, takes it once. (Entries with reserved bits are
            // refused below, whatever they point to.)
            status = LookupEntry(guestCluster, out entry);
            if (status == IoStatus.Ok && entry.HostOffset != 0 && !entry.Compressed && (entry.Word & Qcow2Format.L2ReservedMask) == 0)
            {
                status = CheckDataCluster(guestCluster, entry);
            }
        }
        if (status != IoStatus.Ok)
        {
            return status;
        }
        if (entry.Compressed)
        {
            return WriteIntoCompressed(guestCluster, entry, start, data, ref metadataChanged);
        }
        int end = start + length;
        int firstUnit = start >> _unitBits;
        int lastUnit = (end - 1) >> _unitBits;
        bool allData = true;
        for (int unit = firstUnit; unit <= lastUnit; unit++)
        {
            UnitState state = StateOf(entry, unit);
            if (state == UnitState.Invalid)
            {
                return RefuseRequest($"guest cluster {guestCluster} has an invalid L2 entry (0x{entry.Word:x16})");
            }
            allData &= state == UnitState.Data;
        }
        long host = entry.HostOffset;
        if (allData && entry.Copied)
        {
            // The common case: rewriting data in place needs no metadata at all.
            return _overlay.Write(host + start, data);
        }

        bool newCluster = false;
        if (host == 0)
        {
            lock (_metadataLock)
            {
                status = _refcounts.AllocateCluster(out host);
            }
            if (status != IoStatus.Ok)
            {
                return status;
            }
            newCluster = true;
        }

        long clusterStart = guestCluster << _clusterBits;
        int headStart = firstUnit << _unitBits;
        int tailEnd = (lastUnit + 1) << _unitBits;
        UnitState headState = StateOf(entry, firstUnit);
        UnitState tailState = StateOf(entry, lastUnit);
        bool fillHead = start > headStart && headState != UnitState.Data;
        bool fillTail = end < tailEnd && tailState != UnitState.Data;
        AlignedBuffer headBuffer = default, tailBuffer = default;
        bool haveHead = false, haveTail = false;
        try
        {
            Span<IoBuffer> list = data.Length + 2 <= StackSliceLimit ? stackalloc IoBuffer[data.Length + 2] : new IoBuffer[data.Length + 2];
            int count = 0;
            int writeStart = start;
            if (fillHead)
            {
                status = FillSource(headState, clusterStart + headStart, start - headStart, ref headBuffer, ref haveHead, out IoBuffer head);
                list[count++] = head;
                writeStart = headStart;
            }
            data.CopyTo(list[count..]);
            count += data.Length;
            int writeEnd = end;
            if (status == IoStatus.Ok && fillTail)
            {
                status = FillSource(tailState, clusterStart + end, tailEnd - end, ref tailBuffer, ref haveTail, out IoBuffer tail);
                list[count++] = tail;
                writeEnd = tailEnd;
            }
            if (status == IoStatus.Ok)
            {
                status = _overlay.Write(host + writeStart, list[..count]);
            }
            if (status == IoStatus.Ok && (haveHead || haveTail))
            {
                // A rented fill buffer means backing data was read. One copy-up per unit completed
                // from it: a head and a tail inside the same unit are one.
                int units = (haveHead ? 1 : 0) + (haveTail && !(haveHead && firstUnit == lastUnit) ? 1 : 0);
                _statistics.CountCopyUps(units, (haveHead ? start - headStart : 0) + (haveTail ? tailEnd - end : 0));
            }
        }
        finally
        {
            if (haveHead)
            {
                _scratch.Return(headBuffer);
            }
            if (haveTail)
            {
                _scratch.Return(tailBuffer);
            }
        }

        lock (_metadataLock)
        {
            if (status != IoStatus.Ok)
            {
                if (newCluster)
                {
                    // Nothing references the cluster yet, so it can be released at once.
                    _refcounts.ReleaseUnreferenced(host);
                }
                return status;
            }
            // Data first, then the entry that points at it (the write-back pass keeps that order on disk).
            status = GetL2Table(guestCluster, allocate: true, out MetadataCache.Entry? table, out int index);
            if (status != IoStatus.Ok)
            {
                if (newCluster)
                {
                    _refcounts.ReleaseUnreferenced(host);
                }
                return status;
            }
            L2Entry updated;
            if (_extendedL2)
            {
                uint mask = UnitMask(firstUnit, lastUnit);
                ulong allocated = entry.AllocatedBits | mask;
                ulong zero = entry.ZeroBits & ~mask;
                updated = new L2Entry((ulong)host | Qcow2Format.OflagCopied, allocated | (zero << 32));
            }
            else
            {
                updated = new L2Entry((ulong)host | Qcow2Format.OflagCopied, 0);
            }
            _l2.Write(table!, index, updated);
            metadataChanged = true;
            if (copiedData || fillHead || fillTail)
            {
                // The new units hold bytes the guest did not send with this write (backing data
                // copied up, or the zeros a unit read as): they must be durable before the entry
                // reaches the file, or a power loss could change sectors the guest never wrote
                // (to zeros, or to what a reused cluster held). QEMU orders a copy-on-write the
                // same way (the L2 update depends on a flush after the copy).
                _dataFirstPending = true;
            }
        }
        return IoStatus.Ok;
    }

    /// <summary>
    /// Before data is written into the existing host cluster of <paramref name="entry"/> (under the
    /// metadata lock): the cluster lies within the file, holds no metadata, and is not shared.
    /// Without COPIED the cluster may be shared (snapshots); it is written in place only with a refcount of one.
    /// </summary>
    private IoStatus CheckDataCluster(long guestCluster, L2Entry entry)
    {
        long host = entry.HostOffset;
        if ((host & (_clusterSize - 1)) != 0 || host > _overlay.Info.SizeBytes - _clusterSize)
        {
            return Corrupt($"guest cluster {guestCluster} maps to 0x{host:x}, which is not a cluster within the file");
        }
        IoStatus status = CheckOverlap(host, _clusterSize, MetadataKind.None, $"guest cluster {guestCluster}'s data");
        if (status != IoStatus.Ok || entry.Copied)
        {
            return status;
        }
        status = _refcounts.GetRefcount(host >> _clusterBits, out ulong refcount);
        if (status != IoStatus.Ok)
        {
            return status;
        }
        return refcount switch
        {
            1 => IoStatus.Ok,
            0 => Corrupt($"guest cluster {guestCluster} maps to 0x{host:x}, whose refcount is 0"),
            _ => RefuseRequest($"data cluster 0x{host:x} is shared (refcount {refcount}); writing shared clusters is not supported"),
        };
    }

    private static uint UnitMask(int firstUnit, int lastUnit)
    {
        ulong bits = ((1UL << (lastUnit - firstUnit + 1)) - 1) << firstUnit;
        return (uint)bits;
    }

    /// <summary>The bytes that complete a partly written unit: zeros, or the backing device's data for an unallocated unit.</summary>
    private IoStatus FillSource(UnitState state, long guestOffset, int length, ref AlignedBuffer buffer, ref bool rented, out IoBuffer fill)
    {
        if (state == UnitState.Zero || _backing == null || guestOffset >= _backing.Info.SizeBytes)
        {
            fill = new IoBuffer(_zeros.Address, length);
            return IoStatus.Ok;
        }
        buffer = _scratch.Rent();
        rented = true;
        fill = new IoBuffer(buffer.Address, length);
        return ReadBacking(guestOffset, length, new ReadOnlySpan<IoBuffer>(in fill));
    }

    public IoStatus Flush()
    {
        if (IsClosed)
        {
            // Closed (its tables and locks released): an error result, never an exception on a ring thread.
            return IoStatus.IoError;
        }
        if (ReadOnly || _policy == MetadataPolicy.Transient)
        {
            // Transient overlays are thrown away: nothing they hold is ever meant to be durable.
            return IoStatus.Ok;
        }
        if (_failure != null)
        {
            return IoStatus.IoError;
        }
        return WriteBack(forGuestFlush: true);
    }

    /// <summary>
    /// Deallocates the range: whole units become zero units (or unallocated when there is no backing
    /// device, where unallocated reads as zeros); partly covered units are overwritten with zeros.
    /// Afterwards the range reads as zeros, never as the base. Freed clusters return to the allocator
    /// after the next write-back.
    /// </summary>
    public IoStatus Discard(long offset, long length, bool secure)
    {
        if (IsClosed)
        {
            // Closed (its tables and locks released): an error result, never an exception on a ring thread.
            return IoStatus.IoError;
        }
        if (ReadOnly)
        {
            return IoStatus.ReadOnly;
        }
        if (secure)
        {
            // Freed host clusters keep their contents until reused; nothing here can promise otherwise.
            return IoStatus.NotSupported;
        }
        if (!IoRange.IsValid(offset, length, _virtualSize, 512))
        {
            return IoStatus.OutOfRange;
        }
        if (_failure != null)
        {
            return IoStatus.IoError;
        }
        MarkBitmapsDirty(offset, length);
        bool metadataChanged = false;
        IoStatus status = IoStatus.Ok;
        foreach (GuestClusterRange.Step step in new GuestClusterRange(offset, length, _clusterBits))
        {
            ReaderWriterLockSlim stripe = StripeFor(step.GuestCluster);
            EnterExclusive(stripe, step.GuestCluster);
            try
            {
                status = DiscardInCluster(step.GuestCluster, step.Start, step.Length, ref metadataChanged);
            }
            finally
            {
                ExitExclusive(stripe, step.GuestCluster);
            }
            if (status != IoStatus.Ok)
            {
                break;
            }
        }
        return AfterMetadataChange(status, metadataChanged);
    }

    private IoStatus DiscardInCluster(long guestCluster, int start, int length, ref bool metadataChanged)
    {
        int end = start + length;
        int firstWhole = (start + _unitSize - 1) >> _unitBits;
        int lastWhole = (end >> _unitBits) - 1;
        IoStatus status;
        if (_extendedL2 && length < _clusterSize)
        {
            // Part of a compressed cluster cannot be dropped: those subclusters are zeroed instead, which copies the cluster up.
            status = LookupEntryLocked(guestCluster, out L2Entry entry);
            if (status != IoStatus.Ok || entry.Compressed)
            {
                return status != IoStatus.Ok ? status : ZeroPart(guestCluster, start, length, ref metadataChanged);
            }
        }
        if (firstWhole <= lastWhole)
        {
            lock (_metadataLock)
            {
                status = DiscardUnits(guestCluster, firstWhole, lastWhole, ref metadataChanged);
            }
            if (status != IoStatus.Ok)
            {
                return status;
            }
        }
        // Partly covered units at either end are overwritten with zeros.
        int headEnd = Math.Min(end, firstWhole << _unitBits);
        if (start < headEnd)
        {
            status = ZeroPart(guestCluster, start, headEnd - start, ref metadataChanged);
            if (status != IoStatus.Ok)
            {
                return status;
            }
        }
        int tailStart = Math.Max(start, (lastWhole + 1) << _unitBits);
        if (tailStart < end && tailStart >= headEnd)
        {
            status = ZeroPart(guestCluster, tailStart, end - tailStart, ref metadataChanged);
            if (status != IoStatus.Ok)
            {
                return status;
            }
        }
        return IoStatus.Ok;
    }

    private IoStatus ZeroPart(long guestCluster, int start, int length, ref bool metadataChanged)
    {
        IoStatus status = LookupEntryLocked(guestCluster, out L2Entry entry);
        if (status != IoStatus.Ok)
        {
            return status;
        }
        UnitState state = StateOf(entry, start >> _unitBits);
        if (state == UnitState.Zero || (state == UnitState.Unallocated && _backing == null))
        {
            return IoStatus.Ok;
        }
        IoBuffer zeros = new(_zeros.Address, length);
        return WriteInCluster(guestCluster, start, length, new ReadOnlySpan<IoBuffer>(in zeros), ref metadataChanged);
    }

    /// <summary>Marks whole units [first, last] as zero (under the metadata lock) and queues the host cluster for freeing when nothing in it is allocated any more.</summary>
    private IoStatus DiscardUnits(long guestCluster, int first, int last, ref bool metadataChanged)
    {
        bool hasBacking = _backing != null;
        IoStatus status = GetL2Table(guestCluster, allocate: false, out MetadataCache.Entry? table, out int index);
        if (status != IoStatus.Ok)
        {
            return status;
        }
        if (table == null && !hasBacking)
        {
            return IoStatus.Ok; // unallocated without a backing file already reads as zeros
        }
        L2Entry entry = table != null ? _l2.Read(table, index) : default;
        if (entry.Compressed)
        {
            // The whole cluster (a partial discard was turned into zeroing by DiscardInCluster):
            // the entry goes, and with it one reference on each host cluster the compressed data spans.
            L2Entry dropped = _extendedL2
                ? new L2Entry(0, hasBacking ? (ulong)uint.MaxValue << 32 : 0)
                : new L2Entry(hasBacking ? Qcow2Format.OflagZero : 0, 0);
            _l2.Write(table!, index, dropped);
            QueueCompressedFree(entry);
            metadataChanged = true;
            return IoStatus.Ok;
        }
        for (int unit = first; unit <= last; unit++)
        {
            if (StateOf(entry, unit) == UnitState.Invalid)
            {
                return RefuseRequest($"discard of guest cluster {guestCluster}: invalid L2 entry (0x{entry.Word:x16})");
            }
        }
        if (host(entry) != 0 && !entry.Copied)
        {
            status = _refcounts.GetRefcount(host(entry) >> _clusterBits, out ulong refcount);
            if (status != IoStatus.Ok)
            {
                return status;
            }
            if (refcount != 1)
            {
                return RefuseRequest($"discard of guest cluster {guestCluster}: its data cluster is shared (refcount {refcount})");
            }
        }
        L2Entry updated;
        long freed = 0;
        if (_extendedL2)
        {
            uint mask = UnitMask(first, last);
            uint allocated = entry.AllocatedBits & ~mask;
            uint zero = hasBacking ? entry.ZeroBits | mask : entry.ZeroBits & ~mask;
            ulong word = entry.Word;
            if (allocated == 0 && entry.HostOffset != 0)
            {
                freed = entry.HostOffset;
                word = 0;
            }
            updated = new L2Entry(word, allocated | ((ulong)zero << 32));
        }
        else
        {
            freed = entry.HostOffset;
            updated = new L2Entry(hasBacking ? Qcow2Format.OflagZero : 0, 0);
        }
        if (updated == entry)
        {
            return IoStatus.Ok;
        }
        if (table == null)
        {
            status = GetL2Table(guestCluster, allocate: true, out table, out index);
            if (status != IoStatus.Ok)
            {
                return status;
            }
        }
        _l2.Write(table!, index, updated);
        metadataChanged = true;
        if (freed != 0)
        {
            // Reused only after the cleared entry is on disk (see WriteBackCore).
            _refcounts.FreeAfterWriteBack(freed);
        }
        return IoStatus.Ok;

        static long host(L2Entry e) => e.HostOffset;
    }
}
