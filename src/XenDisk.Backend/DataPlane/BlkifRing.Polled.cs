using Tmds.Linux;
using XenDisk.Storage;
using static Tmds.Linux.LibC;

namespace XenDisk.Backend.DataPlane;

// A device the ring thread drives itself (IPolledBlockDevice: an iSCSI LUN through libiscsi): the
// ring's own queue on it is one more thing the thread's io_uring waits on. Its socket is a
// POLL_ADD with the events the queue asks for, its wake-up descriptor another, its timer (deadlines,
// a deferred reconnect) an IORING_OP_TIMEOUT; requests start on it straight from Dispatch and are
// answered from its completions on this thread, so a request is never handed to another thread and
// the only system calls per batch are the socket's writes and reads and the loop's one io_uring_enter.
public sealed unsafe partial class BlkifRing : IPolledCompletion
{
    /// <summary>io_uring operations the queue can have armed at once: the socket poll (two while a
    /// replaced one's cancellation is on its way), its removal, the wake-up poll and the timer.</summary>
    private const int PolledControlOperations = 5;

    /// <summary>The polled queue's timer's timespec, after the ring's own control memory.</summary>
    private const int PolledTimespecOffset = ControlMemoryBytes;
    private const int PolledTimespecBytes = 16;

    // user_data tags of the queue's operations; the socket poll's low 32 bits carry its generation,
    // so that the completion of a poll replaced since (the descriptor changed on a reconnect) is known.
    private const ulong TagPolledSocket = 8;
    private const ulong TagPolledWake = 9;
    private const ulong TagPolledTimer = 10;
    private const ulong TagPolledRemove = 11;

    private IPolledQueue? _polled;
    private int[] _polledDone = [];
    private int _polledDoneCount;
    private bool _polledSocketArmed;
    private int _polledSocketFd = -1;
    private int _polledSocketEvents;
    private int _polledSocketConnection;
    private uint _polledSocketGeneration;
    private bool _polledWakeArmed;
    private bool _polledTimerArmed;

    /// <summary>Opens the ring's own queue when the disk offers one; without it every request takes the I/O threads.</summary>
    private void OpenPolledQueue(int entries)
    {
        if (Setup.Disk is not IPolledBlockDevice device)
        {
            return;
        }

        _polledDone = new int[entries];
        try
        {
            _polled = device.OpenQueue(this);
        }
        catch (StorageException exception)
        {
            DataPlaneLog.PolledQueueUnavailable(_logger, Setup.Name, exception.Message);
        }
    }

    /// <summary>Starts the request on the ring's polled queue; false when there is none or it declines (the I/O threads then run it).</summary>
    private bool TrySubmitPolled(RequestContext context)
    {
        if (_polled is null)
        {
            return false;
        }

        ref BlkifRequestInfo request = ref context.Request;
        PolledOperation operation;
        switch (request.Kind)
        {
            case RingOperation.Read:
                operation = PolledOperation.Read;
                break;
            case RingOperation.Write:
                operation = PolledOperation.Write;
                break;
            case RingOperation.Discard when !request.IsSecureDiscard && request.Length > 0:
                operation = PolledOperation.Discard;
                break;

            // A flush with data (blkfront's FUA) is three steps in order: the blocking path runs them.
            case RingOperation.Flush or RingOperation.Barrier when request.SegmentCount == 0:
                operation = PolledOperation.Flush;
                break;
            default:
                return false;
        }

        context.Result = IoStatus.Ok;
        ReadOnlySpan<IoBuffer> buffers = context.Buffers.AsSpan(0, request.SegmentCount);
        if (!_polled.TrySubmit(context.Index, operation, request.Offset, request.Length, buffers))
        {
            return false;
        }

        Statistics.FastPath();
        return true;
    }

    /// <summary>The queue answered a request: recorded here, completed by <see cref="CompletePolled"/> once the queue's call has returned.</summary>
    void IPolledCompletion.Completed(int tag, IoStatus status)
    {
        _contexts[tag].Result = status;
        _polledDone[_polledDoneCount++] = tag;
    }

    /// <summary>Answers what the polled queue finished (outside its calls, so that the requests this
    /// unblocks may start on it). True when there was any.</summary>
    private bool CompletePolled()
    {
        if (_polledDoneCount == 0)
        {
            return false;
        }

        // Taken one at a time from the end: completing one may start a blocked request on the queue,
        // whose answer (when the queue refuses it at once) is recorded behind it.
        while (_polledDoneCount > 0)
        {
            RequestContext context = _contexts[_polledDone[--_polledDoneCount]];
            if (!_drainingForTeardown)
            {
                Complete(context);
            }
        }

        return true;
    }

    /// <summary>Before a wait (or another round of a busy loop): the queue writes what was started since
    /// the last call. True when requests completed meanwhile (a failed connection), so the loop goes round.</summary>
    private bool FlushPolled()
    {
        if (_polled is null)
        {
            return false;
        }

        _polled.PrepareToWait();
        return CompletePolled();
    }

    /// <summary>A completion of one of the queue's operations, from ReapEngine.</summary>
    private void ReapPolled(in io_uring_cqe cqe, ulong tag)
    {
        IPolledQueue? queue = _polled;
        switch (tag)
        {
            case TagPolledSocket:
                if ((uint)cqe.user_data != _polledSocketGeneration || !_polledSocketArmed)
                {
                    // A poll replaced since (its removal's answer, or it fired as it was removed).
                    return;
                }

                _polledSocketArmed = false;
                queue?.Service(cqe.res > 0 ? cqe.res : 0, woken: false);
                break;
            case TagPolledWake:
                _polledWakeArmed = false;
                queue?.Service(0, woken: true);
                break;
            case TagPolledTimer:
                _polledTimerArmed = false;
                queue?.Service(0, woken: false);
                break;
            default:
                return;
        }

        CompletePolled();
    }

    /// <summary>
    /// Before the loop's io_uring_enter: the socket poll with the events the queue wants now (replaced
    /// when the descriptor, its connection or the events changed: a reconnect opens a new socket, maybe
    /// under the old one's number, which a poll armed on the old file would never report; a full send
    /// buffer adds POLLOUT), the wake-up poll, and the timer when the queue has deadlines. A timer armed earlier
    /// for longer than the queue now wants is left to run: the queue's ticks are at most 100 ms apart.
    /// </summary>
    private void ArmPolled()
    {
        IPolledQueue? queue = _polled;
        if (queue is null)
        {
            return;
        }

        int events = queue.Events;
        int fd = events != 0 ? queue.FileDescriptor : -1;
        int connection = queue.ConnectionGeneration;
        if (_polledSocketArmed && (fd != _polledSocketFd || events != _polledSocketEvents || connection != _polledSocketConnection))
        {
            io_uring_sqe* remove = NextControlSubmission();
            remove->opcode = IORING_OP_POLL_REMOVE;
            remove->addr = PolledSocketUserData(_polledSocketGeneration);
            remove->user_data = TagPolledRemove << TagShift;
            _uringOperations++;
            _polledSocketArmed = false;
        }

        if (!_polledSocketArmed && fd >= 0)
        {
            _polledSocketGeneration++;
            io_uring_sqe* sqe = NextControlSubmission();
            sqe->opcode = IORING_OP_POLL_ADD;
            sqe->fd = fd;
            sqe->poll_events = (ushort)events;
            sqe->user_data = PolledSocketUserData(_polledSocketGeneration);
            _uringOperations++;
            _polledSocketArmed = true;
            _polledSocketFd = fd;
            _polledSocketEvents = events;
            _polledSocketConnection = connection;
        }

        if (!_polledWakeArmed)
        {
            ArmPoll(queue.WakeDescriptor, TagPolledWake);
            _polledWakeArmed = true;
        }

        int timer = queue.TimerMilliseconds;
        if (timer != Timeout.Infinite && !_polledTimerArmed)
        {
            long* ts = (long*)(_controlMemory + PolledTimespecOffset);
            ts[0] = timer / 1000;
            ts[1] = (timer % 1000) * 1_000_000L;
            io_uring_sqe* sqe = NextControlSubmission();
            sqe->opcode = IORING_OP_TIMEOUT;
            sqe->addr = (ulong)(_controlMemory + PolledTimespecOffset);
            sqe->len = 1;
            sqe->user_data = TagPolledTimer << TagShift;
            _uringOperations++;
            _polledTimerArmed = true;
        }
    }

    private static ulong PolledSocketUserData(uint generation) => (TagPolledSocket << TagShift) | generation;

    /// <summary>Before guest pages are unmapped after a fault: the queue ends every request it holds, so
    /// that none of their buffers is touched again.</summary>
    private void CancelPolled()
    {
        _polled?.CancelAll();
        _polledDoneCount = 0;
    }

    /// <summary>After the thread's loop has ended: closes the queue (its connection logs out).</summary>
    private void ClosePolled()
    {
        IPolledQueue? queue = _polled;
        _polled = null;
        if (queue is null)
        {
            return;
        }

        try
        {
            queue.Dispose();
        }
        catch (Exception exception) when (exception is StorageException or InvalidOperationException)
        {
            DataPlaneLog.PolledQueueCloseFailed(_logger, Setup.Name, exception);
        }

        _polledDoneCount = 0;
    }
}
