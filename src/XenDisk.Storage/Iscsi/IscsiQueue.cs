using XenDisk.Storage.Iscsi.Interop;

namespace XenDisk.Storage.Iscsi;

/// <summary>
/// One event loop's own connection to a LUN (<see cref="IPolledQueue"/>): a driven
/// <see cref="IscsiSession"/> whose socket the loop waits on and whose commands it issues and completes
/// itself. READ (16), WRITE (16), SYNCHRONIZE CACHE (16) and a single UNMAP go straight from the
/// caller's buffers to libiscsi's iovecs; a request that needs more than one command (larger than the
/// LUN's maximum transfer or unmap) is declined and takes the device's blocking path.
/// <para>
/// Why one connection per loop, and not one context shared by every ring of a LUN (multi-queue, or a
/// plain disk opened by several guests' rings): a libiscsi context is single-threaded, so sharing it
/// would need a hand-off between threads for every command, which is what this queue exists to
/// remove. Each ring logs in a session of its own (its own I_T nexus, its own command window), and
/// SCSI keeps them coherent: a write completed on one nexus is seen by a read on any other, and
/// SYNCHRONIZE CACHE covers the whole LUN whichever nexus sends it. The ring drains earlier requests
/// before a flush (blkif.h, BLKIF_OP_FLUSH_DISKCACHE), so every write it covers has completed.
/// A reserved LUN (<see cref="IscsiReservation"/>, type 5, registrants only) lets every registered
/// nexus write: the queue registers its nexus under the host's key before its first command, and after
/// a reconnect asks the device's session to take the reservation again and registers again
/// (<see cref="IscsiSession.ReservationOwner"/>); it never holds the reservation itself, so closing it
/// only removes its own registration.
/// </para>
/// Ownership: the loop that drives the queue alone calls it; the device outlives it. The command slots
/// are the session's, preallocated: a full queue declines (back-pressure onto the blocking path), it
/// never allocates.
/// </summary>
internal sealed unsafe class IscsiQueue : IPolledQueue
{
    private readonly IscsiBlockDevice _device;
    private readonly IscsiSession _session;
    private readonly IPolledCompletion _completion;
    private readonly long _maxTransferBytes;
    private readonly uint _maxUnmapBlocks;
    private readonly ulong _reservationKey;
    private bool _disposed;

    private IscsiQueue(IscsiBlockDevice device, IscsiSession session, IPolledCompletion completion, long maxTransferBytes, uint maxUnmapBlocks, ulong reservationKey)
    {
        _device = device;
        _session = session;
        _completion = completion;
        _maxTransferBytes = maxTransferBytes;
        _maxUnmapBlocks = maxUnmapBlocks;
        _reservationKey = reservationKey;
    }

    /// <summary>The queue's session (for tests that watch what it issues).</summary>
    internal IscsiSession Session => _session;

    /// <summary>
    /// Logs in a driven session to the device's LUN and, when the device holds the LUN's reservation,
    /// registers its nexus before anything else is issued on it. Blocks for both.
    /// </summary>
    internal static IscsiQueue Open(IscsiBlockDevice device, IscsiOptions options, IPolledCompletion completion, long maxTransferBytes, uint maxUnmapBlocks, ulong reservationKey, IscsiSession owner)
    {
        IscsiSession session = IscsiSession.Connect(device.Url, options, driven: true);
        try
        {
            session.SelfDriving = true;
            if (reservationKey != 0)
            {
                IscsiReservation.RegisterNexus(session, reservationKey);
                session.ReservationOwner = owner;
                session.ReservationKey = reservationKey;
            }
            session.SelfDriving = false;
            return new IscsiQueue(device, session, completion, maxTransferBytes, maxUnmapBlocks, reservationKey);
        }
        catch
        {
            session.Dispose();
            throw;
        }
    }

    public int FileDescriptor => _session.FileDescriptor;

    public int Events => _session.Events;

    public int ConnectionGeneration => _session.ConnectionGeneration;

    public int WakeDescriptor => _session.WakeDescriptor;

    public int TimerMilliseconds => _session.TimerMilliseconds;

    public bool TrySubmit(int tag, PolledOperation operation, long offset, long length, ReadOnlySpan<IoBuffer> buffers)
    {
        BlockDeviceInfo info = _device.Info;
        int blockSize = info.LogicalSectorSize;
        if (_disposed || offset < 0 || length < 0 || offset % blockSize != 0 || length % blockSize != 0 || offset > info.SizeBytes - length)
        {
            // The blocking path gives the answer (OutOfRange), with its one rule for it.
            return false;
        }
        IscsiOperation scsi;
        switch (operation)
        {
            case PolledOperation.Read:
            case PolledOperation.Write:
                if ((operation == PolledOperation.Write && info.ReadOnly) || length == 0 || length > _maxTransferBytes || buffers.Length > IscsiSession.MaxSegments)
                {
                    return false;
                }
                scsi = operation == PolledOperation.Read ? IscsiOperation.Read : IscsiOperation.Write;
                break;
            case PolledOperation.Flush:
                if (info.ReadOnly)
                {
                    return false;
                }
                scsi = IscsiOperation.SynchronizeCache;
                break;
            case PolledOperation.Discard:
                if (info.ReadOnly || !info.SupportsDiscard || length == 0 || length / blockSize > _maxUnmapBlocks)
                {
                    return false;
                }
                scsi = IscsiOperation.Unmap;
                break;
            default:
                return false;
        }

        IscsiCommand? command = _session.TryRent();
        if (command is null)
        {
            return false;
        }
        if (scsi is IscsiOperation.Read or IscsiOperation.Write)
        {
            long total = 0;
            for (int i = 0; i < buffers.Length; i++)
            {
                command.Iov[i].iov_base = buffers[i].Address;
                command.Iov[i].iov_len = (nuint)buffers[i].Length;
                total += buffers[i].Length;
            }
            if (total != length)
            {
                _session.Return(command);
                return false;
            }
            command.Lba = (ulong)(offset / blockSize);
            command.Length = (uint)length;
            command.BlockSize = blockSize;
            command.IovCount = buffers.Length;
        }
        else if (scsi == IscsiOperation.Unmap)
        {
            command.Unmap->lba = (ulong)(offset / blockSize);
            command.Unmap->num = (uint)(length / blockSize);
        }
        command.Operation = scsi;
        command.Queue = this;
        command.Tag = tag;
        _session.Submit(command);
        return true;
    }

    public void Service(int events, bool woken) => _session.Service(events, woken);

    public void PrepareToWait() => _session.PrepareToWait();

    public void CancelAll() => _session.CancelAll();

    /// <summary>On the loop's thread: the session answered a command this queue submitted.</summary>
    internal void Finished(IscsiCommand command)
    {
        int tag = command.Tag;
        IoStatus status = IscsiBlockDevice.ToIoStatus(command.Outcome);
        command.Queue = null;
        _session.Return(command);
        _completion.Completed(tag, status);
    }

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        _session.CancelAll();
        if (_reservationKey != 0)
        {
            // This nexus never holds the reservation (the device's session does), so unregistering it
            // leaves the host's reservation in place.
            _session.ReservationKey = 0;
            _session.SelfDriving = true;
            IscsiReservation.UnregisterNexusQuietly(_session, _reservationKey);
        }
        _session.Dispose();
    }
}
