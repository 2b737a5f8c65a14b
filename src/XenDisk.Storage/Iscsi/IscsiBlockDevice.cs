using XenDisk.Storage.Iscsi.Interop;

namespace XenDisk.Storage.Iscsi;

/// <summary>
/// An <see cref="IBlockDevice"/> over one iSCSI LUN, through a userspace libiscsi session
/// (<see cref="IscsiSession"/>). The size and sector sizes come from READ CAPACITY (16) and are read
/// again by <see cref="Refresh"/> (online resize); reads and writes are READ (16) and WRITE (16) whose
/// data moves straight between the caller's buffers and the socket (libiscsi's iovec interface, no
/// copy); <see cref="Flush"/> is SYNCHRONIZE CACHE (16) over the whole LUN; <see cref="Discard"/> is
/// UNMAP, offered only when the LUN advertises it (READ CAPACITY's LBPME and the Logical Block
/// Provisioning page's LBPU), in pieces no larger than its Block Limits page allows, with its optimal
/// unmap granularity published as the discard granularity.
/// A LUN opened for writing under a configured <see cref="IscsiOptions.ReservationKey"/> is reserved
/// for this host (<see cref="IscsiReservation"/>) until the device is disposed; opened read-only (a golden
/// base) it takes no reservation and shares the LUN with every host.
/// Thread-safe: callers on many threads keep many commands in flight on the one session.
/// <para>
/// The data plane does not block on it: each ring opens an <see cref="IscsiQueue"/> of its own
/// (<see cref="OpenQueue"/>, a second login to the LUN driven by the ring thread's event loop), and
/// only what that queue declines comes here through the blocking calls, as do tools and control work.
/// </para>
/// </summary>
public sealed unsafe class IscsiBlockDevice : IPolledBlockDevice
{
    /// <summary>Largest data transfer of one command when the LUN sets no limit: large enough for any blkif request.</summary>
    private const long DefaultMaxTransferBytes = 8 << 20;

    private readonly IscsiSession _session;
    private readonly IscsiOptions _options;
    private readonly bool _readOnly;
    private readonly long _maxTransferBytes;
    private readonly uint _maxUnmapBlocks;
    private BlockDeviceInfo _info;
    private int _disposed;
    /// <summary>The key this device holds the LUN's reservation under, or 0.</summary>
    private ulong _reservationKey;

    private IscsiBlockDevice(IscsiSession session, IscsiOptions options, bool readOnly, BlockDeviceInfo info, long maxTransferBytes, uint maxUnmapBlocks)
    {
        _session = session;
        _options = options;
        _readOnly = readOnly;
        _info = info;
        _maxTransferBytes = maxTransferBytes;
        _maxUnmapBlocks = maxUnmapBlocks;
    }

    /// <summary>The session (for tests that watch what it issues).</summary>
    internal IscsiSession Session => _session;

    /// <summary>The LUN this device reaches.</summary>
    public IscsiUrl Url => _session.Url;

    /// <summary>The host key this device reserved the LUN under, or 0 when it holds no reservation.</summary>
    public ulong ReservationKey => _reservationKey;

    /// <summary>
    /// Breaks the persistent reservation on <paramref name="url"/> (a host that died holding it), using
    /// <see cref="IscsiOptions.ReservationKey"/> or, when none is configured, a one-off key. Returns the
    /// holder it broke, or null when the LUN was not reserved.
    /// </summary>
    public static IscsiReservationHolder? BreakReservation(IscsiUrl url, IscsiOptions options)
    {
        using IscsiSession session = IscsiSession.Connect(url, options);
        ulong key = options.ReservationKey != 0 ? options.ReservationKey : (ulong)Random.Shared.NextInt64(1, long.MaxValue);
        return IscsiReservation.Break(session, key);
    }

    /// <summary>The LUN's reservation holder, or null.</summary>
    public static IscsiReservationHolder? ReadReservation(IscsiUrl url, IscsiOptions options)
    {
        using IscsiSession session = IscsiSession.Connect(url, options);
        return IscsiReservation.ReadHolder(session);
    }

    /// <summary>How many times the session's connection was re-established since it was opened.</summary>
    public long Reconnects => _session.Reconnects;

    public BlockDeviceInfo Info => Volatile.Read(ref _info);

    public bool CompletesInline => false;

    /// <summary>
    /// Logs in to the LUN and reads its capacity and limits. Throws <see cref="StorageException"/> with
    /// one line for the operator (unreachable portal, refused login, bad CHAP, no such LUN).
    /// </summary>
    public static IscsiBlockDevice Open(IscsiUrl url, bool readOnly, IscsiOptions options)
    {
        IscsiSession session = IscsiSession.Connect(url, options);
        try
        {
            ReadCapacity16 capacity = ReadCapacity(session);
            BlockLimitsPage? limits = null;
            ProvisioningPage? provisioning = null;
            if (capacity.ProvisioningEnabled)
            {
                limits = BlockLimitsPage.Parse(Inquiry(session, BlockLimitsPage.PageCode));
                provisioning = ProvisioningPage.Parse(Inquiry(session, ProvisioningPage.PageCode));
            }
            else
            {
                limits = BlockLimitsPage.Parse(Inquiry(session, BlockLimitsPage.PageCode));
            }
            int blockSize = (int)capacity.BlockLength;
            bool unmap = !readOnly && capacity.ProvisioningEnabled && (provisioning?.UnmapSupported ?? false) && limits is { MaximumUnmapLbaCount: > 0 };
            long maxTransfer = limits is { MaximumTransferLength: > 0 } l ? Math.Min(DefaultMaxTransferBytes, (long)l.MaximumTransferLength * blockSize) : DefaultMaxTransferBytes;
            BlockDeviceInfo info = new()
            {
                SizeBytes = SizeOf(capacity),
                LogicalSectorSize = blockSize,
                PhysicalSectorSize = blockSize << Math.Min(capacity.PhysicalBlockExponent, 4),
                ReadOnly = readOnly,
                SupportsDiscard = unmap,
                DiscardZeroes = unmap && capacity.ReadsZeroAfterUnmap,
                DiscardGranularity = unmap ? (int)Math.Clamp((long)Math.Max(limits!.Value.OptimalUnmapGranularity, 1) * blockSize, blockSize, 1 << 30) : blockSize,
                DiscardAlignment = unmap && limits!.Value.AlignmentValid ? (int)Math.Min((long)limits.Value.UnmapGranularityAlignment * blockSize, 1 << 30) : 0,
                Description = $"iSCSI LUN {url}",
            };
            IscsiBlockDevice device = new(session, options, readOnly, info, maxTransfer, unmap ? limits!.Value.MaximumUnmapLbaCount : 0);
            if (!readOnly && options.ReservationKey != 0)
            {
                IscsiReservation.Acquire(session, options.ReservationKey);
                device._reservationKey = options.ReservationKey;
                // From here on the session takes the reservation again after every reconnect, before
                // it issues anything else (IscsiSession, "A session that writes under a persistent reservation").
                session.ReservationKey = options.ReservationKey;
            }
            return device;
        }
        catch
        {
            session.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A connection of the calling event loop's own to the LUN (<see cref="IscsiQueue"/>): logged in
    /// with the device's options and, when the device holds the LUN's reservation, registered under its key.
    /// </summary>
    public IPolledQueue OpenQueue(IPolledCompletion completion)
    {
        ArgumentNullException.ThrowIfNull(completion);
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        return IscsiQueue.Open(this, _options, completion, _maxTransferBytes, _maxUnmapBlocks, _reservationKey, _session);
    }

    public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers) => Transfer(IscsiOperation.Read, offset, buffers);

    public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers) =>
        _readOnly ? IoStatus.ReadOnly : Transfer(IscsiOperation.Write, offset, buffers);

    public IoStatus Flush()
    {
        if (_readOnly)
        {
            return IoStatus.Ok;
        }
        IscsiCommand command = _session.Rent();
        try
        {
            command.Operation = IscsiOperation.SynchronizeCache;
            return ToIoStatus(Execute(command));
        }
        finally
        {
            _session.Return(command);
        }
    }

    public IoStatus Discard(long offset, long length, bool secure)
    {
        BlockDeviceInfo info = Info;
        if (_readOnly)
        {
            return IoStatus.ReadOnly;
        }
        if (secure || !info.SupportsDiscard)
        {
            return IoStatus.NotSupported;
        }
        int blockSize = info.LogicalSectorSize;
        if (offset < 0 || length < 0 || offset % blockSize != 0 || length % blockSize != 0 || offset > info.SizeBytes - length)
        {
            return IoStatus.OutOfRange;
        }
        IscsiCommand command = _session.Rent();
        try
        {
            ulong lba = (ulong)(offset / blockSize);
            ulong blocks = (ulong)(length / blockSize);
            while (blocks > 0)
            {
                uint count = (uint)Math.Min(blocks, _maxUnmapBlocks);
                command.Operation = IscsiOperation.Unmap;
                command.Unmap->lba = lba;
                command.Unmap->num = count;
                IoStatus status = ToIoStatus(Execute(command));
                if (status != IoStatus.Ok)
                {
                    return status;
                }
                lba += count;
                blocks -= count;
            }
            return IoStatus.Ok;
        }
        finally
        {
            _session.Return(command);
        }
    }

    public BlockDeviceInfo Refresh()
    {
        ReadCapacity16 capacity = ReadCapacity(_session);
        BlockDeviceInfo current = Info;
        BlockDeviceInfo refreshed = current with { SizeBytes = SizeOf(capacity) };
        Volatile.Write(ref _info, refreshed);
        return refreshed;
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            if (_reservationKey != 0)
            {
                // A clean stop hands the LUN back: another host may take it at once.
                _session.ReservationKey = 0;
                IscsiReservation.ReleaseQuietly(_session, _reservationKey);
            }
            _session.Dispose();
        }
    }

    /// <summary>Runs a command; a reserved LUN's reservation after a reconnect is the session's to restore, before the command runs.</summary>
    private ScsiOutcome Execute(IscsiCommand command) => _session.Execute(command);

    /// <summary>
    /// READ or WRITE (16) over the buffers, cut into commands of at most <see cref="IscsiSession.MaxSegments"/>
    /// iovecs and the LUN's maximum transfer length; one command for every blkif request in practice.
    /// </summary>
    private IoStatus Transfer(IscsiOperation operation, long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        BlockDeviceInfo info = Info;
        int blockSize = info.LogicalSectorSize;
        long total = 0;
        foreach (IoBuffer buffer in buffers)
        {
            if (buffer.Length < 0)
            {
                return IoStatus.OutOfRange;
            }
            total += buffer.Length;
        }
        if (offset < 0 || offset % blockSize != 0 || total % blockSize != 0 || offset > info.SizeBytes - total)
        {
            return IoStatus.OutOfRange;
        }
        if (total == 0)
        {
            return IoStatus.Ok;
        }
        IscsiCommand command = _session.Rent();
        try
        {
            int index = 0;
            int within = 0;
            while (index < buffers.Length)
            {
                // Gather the next command's iovecs; a buffer that does not fit whole is split, at a
                // block boundary, and its rest starts the next command.
                int count = 0;
                long bytes = 0;
                while (index < buffers.Length && count < command.MaxSegments && bytes < _maxTransferBytes)
                {
                    IoBuffer buffer = buffers[index];
                    long take = Math.Min(buffer.Length - within, _maxTransferBytes - bytes);
                    if (take <= 0)
                    {
                        index++;
                        within = 0;
                        continue;
                    }
                    command.Iov[count].iov_base = buffer.Address + within;
                    command.Iov[count].iov_len = (nuint)take;
                    count++;
                    bytes += take;
                    within += (int)take;
                    if (within == buffer.Length)
                    {
                        index++;
                        within = 0;
                    }
                }
                if (bytes % blockSize != 0)
                {
                    // Only possible when the segment limit cut the list mid-block: give back the tail.
                    long excess = bytes % blockSize;
                    while (excess > 0)
                    {
                        ref ScsiIovec last = ref command.Iov[count - 1];
                        long drop = Math.Min(excess, (long)last.iov_len);
                        last.iov_len -= (nuint)drop;
                        excess -= drop;
                        bytes -= drop;
                        if (within >= drop)
                        {
                            within -= (int)drop;
                        }
                        else
                        {
                            index--;
                            within = buffers[index].Length - (int)(drop - within);
                        }
                        if (last.iov_len == 0)
                        {
                            count--;
                        }
                    }
                }
                if (bytes == 0)
                {
                    break;
                }
                command.Operation = operation;
                command.Lba = (ulong)(offset / blockSize);
                command.Length = (uint)bytes;
                command.BlockSize = blockSize;
                command.IovCount = count;
                IoStatus status = ToIoStatus(Execute(command));
                if (status != IoStatus.Ok)
                {
                    return status;
                }
                offset += bytes;
            }
            return IoStatus.Ok;
        }
        finally
        {
            _session.Return(command);
        }
    }

    private static long SizeOf(ReadCapacity16 capacity) => checked((long)(capacity.LastLba + 1) * capacity.BlockLength);

    private static ReadCapacity16 ReadCapacity(IscsiSession session)
    {
        IscsiCommand command = session.Rent();
        try
        {
            command.Operation = IscsiOperation.ReadCapacity;
            ScsiOutcome outcome = session.Execute(command);
            if (!outcome.Good)
            {
                throw new StorageException($"{session.Url}: READ CAPACITY (16) failed: {outcome.Describe()}.");
            }
            return ReadCapacity16.Parse(command.ControlData.AsSpan(0, command.ControlDataLength))
                ?? throw new StorageException($"{session.Url}: READ CAPACITY (16) returned unusable data ({command.ControlDataLength} bytes).");
        }
        finally
        {
            session.Return(command);
        }
    }

    /// <summary>A VPD page's bytes, or empty when the LUN does not have it.</summary>
    private static byte[] Inquiry(IscsiSession session, int page)
    {
        IscsiCommand command = session.Rent();
        try
        {
            command.Operation = IscsiOperation.Inquiry;
            command.Code = page;
            ScsiOutcome outcome = session.Execute(command);
            return outcome.Good ? command.ControlData.AsSpan(0, command.ControlDataLength).ToArray() : [];
        }
        finally
        {
            session.Return(command);
        }
    }

    /// <summary>SCSI outcome to the data plane's result (SPC-4 sense keys; SBC-3 ASC 21h/00h LBA out of range, 27h/07h space allocation failed).</summary>
    internal static IoStatus ToIoStatus(ScsiOutcome outcome) => outcome.Status switch
    {
        ScsiStatus.GOOD => IoStatus.Ok,
        ScsiStatus.CHECK_CONDITION => outcome.SenseKey switch
        {
            ScsiSenseKey.DATA_PROTECTION when outcome.Ascq == 0x2707 => IoStatus.NoSpace,
            ScsiSenseKey.DATA_PROTECTION => IoStatus.ReadOnly,
            ScsiSenseKey.ILLEGAL_REQUEST when outcome.Ascq == 0x2100 => IoStatus.OutOfRange,
            _ => IoStatus.IoError,
        },
        _ => IoStatus.IoError,
    };
}
