using System.Runtime.InteropServices;
using Tmds.Linux;
using XenDisk.Storage;
using XenDisk.Storage.AsyncIo;
using static Tmds.Linux.LibC;

namespace XenDisk.Backend.DataPlane;

// The ring thread's engine: one io_uring per ring thread that carries the fast path's reads, writes
// and fdatasyncs and also the thread's sleep (a read of the event channel's descriptor, which
// delivers the pending port itself, and a poll on the ring's wake-up), so that one io_uring_enter per
// loop iteration submits the batch taken off the blkif ring, the late unmask (a write of the port to
// the evtchn descriptor), and waits for whichever comes first, a guest kick or a completion. A batch
// larger than DataPlaneOptions.SubmissionBatch goes to the kernel in parts as it is taken, so that
// its first I/O is not held back by the set-up of the rest. Without io_uring the thread waits in
// poll(2) and every request goes to the I/O threads.
public sealed unsafe partial class BlkifRing
{
    /// <summary>Extents one request may be remapped into before it takes the slow path instead: an
    /// overlay range of 1 MiB (the largest indirect request) over 64 KiB clusters is at most 17.</summary>
    private const int MaxExtentsPerRequest = 32;

    /// <summary>Non-data operations a ring can have armed at once: the event-channel read (or poll), the
    /// wake-up poll, the idle-grant timeout, the unmask write and a cancellation.</summary>
    private const int ControlOperations = 5;

    /// <summary>The native block behind <see cref="_controlMemory"/>: the timeout's timespec, the event
    /// read's buffer, the unmask write's buffer.</summary>
    private const int TimespecOffset = 0;
    private const int EventReadOffset = 16;
    private const int UnmaskOffset = 24;
    private const int ControlMemoryBytes = 32;

    // io_uring user_data: the tag in the top 4 bits; for data operations the expected byte count in
    // bits 32-59 (requests are at most 1 MiB) and the context index in the low 32 bits.
    private const int TagShift = 60;
    private const ulong TagData = 1;
    private const ulong TagEventPoll = 2;
    private const ulong TagWakePoll = 3;
    private const ulong TagTimeout = 4;
    private const ulong TagCancel = 5;
    private const ulong TagEventRead = 6;
    private const ulong TagUnmask = 7;
    private const ulong ExpectedMask = (1UL << 28) - 1;

    // linux/io_uring.h, absent from the binding's older header: cancel every matching request (5.19+).
    private const uint IORING_ASYNC_CANCEL_ALL = 1 << 0;
    private const uint IORING_ASYNC_CANCEL_ANY = 1 << 2;

    /// <summary>One log line per process when io_uring is unavailable and the thread engine stands in.</summary>
    private static int s_fallbackLogged;

    private RingWaker? _waker;
    private IoUring? _uring;
    private IRemappableBlockDevice? _remap;
    private int[] _fileDescriptors = [];
    private bool _fixedFiles;

    // Grant copy: the bounce pool registered with the io_uring as its one fixed buffer (index 0).
    private bool _fixedBounce;

    /// <summary>Whether one-buffer transfers name the registered bounce pool (grant copy under io_uring).</summary>
    internal bool BouncePoolRegistered => _fixedBounce;

    /// <summary>The most operations one io_uring_enter of this ring has submitted (0 without io_uring).</summary>
    internal uint LargestEngineSubmission => _uring?.LargestSubmission ?? 0;

    private int _iovecCapacity;
    private nint _controlMemory;
    private int _eventFd;
    private int _eventReadSize;
    private bool _eventReadArmed;
    private bool _eventPollArmed;
    private bool _wakePollArmed;
    private bool _timeoutArmed;
    private bool _portMasked;
    private bool _drainingForTeardown;

    /// <summary>io_uring operations in flight (data and control); bounded by the completion ring.</summary>
    private int _uringOperations;

    /// <summary>Data operations (reads, writes, syncs) in flight through io_uring.</summary>
    private int _uringDataOperations;

    /// <summary>The <see cref="EngineName"/> of a ring that runs its I/O through its own io_uring.</summary>
    public const string IoUringEngineName = "io_uring";

    /// <summary>The <see cref="EngineName"/> of a ring whose I/O runs on its I/O threads.</summary>
    public const string ThreadsEngineName = "threads";

    /// <summary>The engine this ring runs (<see cref="IoUringEngineName"/> or <see cref="ThreadsEngineName"/>);
    /// empty until the ring has started. Set once by the ring thread and read by status reports, so it
    /// outlives the io_uring's closing.</summary>
    public string EngineName => Volatile.Read(ref _engineName);

    private string _engineName = "";

    private void InitializeEngine(int entries)
    {
        _waker = new RingWaker();
        IoEngine choice = Setup.Options.IoEngine;
        Volatile.Write(ref _engineName, ThreadsEngineName);
        if (choice == IoEngine.Threads)
        {
            return;
        }

        // A raw disk's request is at most three operations (a flush with data: fdatasync, write,
        // fdatasync). Requests that need more (an overlay range in many extents) are admitted while
        // the completion ring, twice the submission ring, has room for them (see TrySubmitFast).
        int perRequest = 1;
        if (!Setup.Disk.CompletesInline && Setup.Disk is IRemappableBlockDevice remappable)
        {
            _remap = remappable;
            perRequest = 3;
        }

        if (!IoUring.TryCreate((entries * perRequest) + ControlOperations + (Setup.Disk is IPolledBlockDevice ? PolledControlOperations : 0), out IoUring? uring, out string? reason))
        {
            _remap = null;
            if (choice == IoEngine.IoUring)
            {
                throw new InvalidOperationException($"Ring {Setup.Name}: the configured io_uring engine is unavailable: {reason}.");
            }

            if (Interlocked.Exchange(ref s_fallbackLogged, 1) == 0)
            {
                DataPlaneLog.IoUringUnavailable(_logger, reason!);
            }

            return;
        }

        _uring = uring;
        Volatile.Write(ref _engineName, IoUringEngineName);
        _controlMemory = (nint)NativeMemory.AllocZeroed(ControlMemoryBytes + PolledTimespecBytes);
        _eventFd = Setup.EventChannels.FileDescriptor;

        // Reading the port through the io_uring spares the poll's wake-up a read(2) of its own; a handle
        // whose descriptor can only be polled keeps the poll and TakePending.
        int readSize = Setup.EventChannels.PendingReadSize;
        _eventReadSize = readSize is > 0 and <= UnmaskOffset - EventReadOffset ? readSize : 0;
        if (_remap is null)
        {
            // Not a file: a device the thread may drive itself (an iSCSI LUN) opens its queue here;
            // without io_uring there is no loop to wait on its socket, and the I/O threads serve it.
            OpenPolledQueue(entries);
            return;
        }

        _fileDescriptors = new int[_remap.Files.Count];
        for (int i = 0; i < _fileDescriptors.Length; i++)
        {
            _fileDescriptors[i] = (int)_remap.Files[i].DangerousGetHandle();
        }

        // Registered files spare a file-table lookup per operation; an old kernel without them still works.
        _fixedFiles = uring!.RegisterFiles(_fileDescriptors) == 0;

        // Grant copy moves every byte through the bounce pool. Registered once, its pages are pinned
        // once: a one-buffer transfer then names it (READ_FIXED/WRITE_FIXED) and the kernel does not
        // look up and pin the page again for each operation. Without it (a memlock limit too low for
        // an unprivileged service) transfers take plain reads and writes.
        _fixedBounce = _bounce is not null && uring.RegisterBuffer(_bounce.BaseAddress, _bounce.ByteLength) == 0;
        _iovecCapacity = _maxSegments + MaxExtentsPerRequest;
        foreach (RequestContext context in _contexts)
        {
            context.Iovecs = (nint)NativeMemory.AlignedAlloc((nuint)(_iovecCapacity * sizeof(iovec)), 64);
        }
    }

    /// <summary>On the ring thread as it ends, with nothing in flight: closes the io_uring and frees its memory.</summary>
    private void ReleaseEngine()
    {
        ClosePolled();
        CancelEventRead();
        _uring?.Dispose();
        _uring = null;
        foreach (RequestContext context in _contexts)
        {
            if (context.Iovecs != 0)
            {
                NativeMemory.AlignedFree((void*)context.Iovecs);
                context.Iovecs = 0;
            }
        }

        // The kernel writes into the event read's buffer until that read completes or is cancelled
        // (CancelEventRead); if that could not be seen, the few bytes stay allocated rather than reused.
        if (_controlMemory != 0 && !_eventReadArmed)
        {
            NativeMemory.Free((void*)_controlMemory);
        }

        _controlMemory = 0;
    }

    /// <summary>
    /// The fast path: asks the device where the data lives and queues the reads, writes and syncs on
    /// the io_uring (submitted with the rest of the batch). False when the device declines: the
    /// request then goes to the I/O threads. A request whose whole range reads as zeros completes here.
    /// </summary>
    private bool TrySubmitFast(RequestContext context)
    {
        if (_remap is null)
        {
            return false;
        }

        ref BlkifRequestInfo request = ref context.Request;
        bool isFlush = request.Kind is RingOperation.Flush or RingOperation.Barrier;
        if (request.Kind == RingOperation.Discard || (isFlush && !_remap.FlushIsFileSync))
        {
            return false;
        }

        Span<FileExtent> extents = stackalloc FileExtent[MaxExtentsPerRequest];
        int extentCount = 0;
        RemapLease lease = RemapLease.None;
        ReadOnlySpan<IoBuffer> buffers = context.Buffers.AsSpan(0, request.SegmentCount);
        if (request.SegmentCount > 0)
        {
            extentCount = _remap.Remap(request.WritesData, request.Offset, request.Length, buffers, extents, out lease);
            if (extentCount == 0)
            {
                return false;
            }
        }

        int syncs = isFlush ? (request.SegmentCount > 0 ? 2 : 1) * _fileDescriptors.Length : 0;
        int needed = extentCount + syncs;
        // A zero extent is a read answer only; and the completion ring must have room for every
        // operation in flight, or the request waits its turn on the slow path instead.
        if ((request.WritesData && ContainsZeroExtent(extents[..extentCount]))
            || _uringOperations + needed > _uring!.CompletionEntries - ControlOperations)
        {
            _remap.ReleaseLease(lease);
            return false;
        }

        EnsureSubmissionRoom(needed);
        Statistics.FastPath();
        context.Lease = lease;
        context.PendingOperations = 0;

        // Barrier and flush (blkif.h): earlier writes are made durable, then the request's own data is
        // written and made durable before the response (blkfront's FUA). IOSQE_IO_LINK keeps the order
        // and cancels the rest of the chain when one step fails.
        bool chain = isFlush && extentCount > 0;
        if (isFlush)
        {
            QueueSyncs(context, link: chain);
        }

        QueueTransfers(context, request.WritesData, buffers, extents[..extentCount], chain);
        if (isFlush && extentCount > 0)
        {
            QueueSyncs(context, link: false);
        }

        // Only between requests: a linked chain must reach the kernel in one io_uring_enter.
        if (_uring.PendingSubmissions >= (uint)Setup.Options.SubmissionBatch)
        {
            SubmitQueued();
        }

        if (context.PendingOperations == 0)
        {
            // Every extent read as zeros: nothing for the kernel to do.
            ReleaseLeaseOf(context);
            context.Result = IoStatus.Ok;
            Complete(context);
        }

        return true;
    }

    private static bool ContainsZeroExtent(ReadOnlySpan<FileExtent> extents)
    {
        foreach (ref readonly FileExtent extent in extents)
        {
            if (extent.Kind == FileExtentKind.Zero)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>One IORING_OP_FSYNC (fdatasync) per file of the device.</summary>
    private void QueueSyncs(RequestContext context, bool link)
    {
        for (int file = 0; file < _fileDescriptors.Length; file++)
        {
            io_uring_sqe* sqe = _uring!.TryGetSubmission();
            sqe->opcode = IORING_OP_FSYNC;
            SetFile(sqe, file);
            sqe->fsync_flags = IORING_FSYNC_DATASYNC;
            if (link)
            {
                sqe->flags |= IOSQE_IO_LINK;
            }

            sqe->user_data = DataUserData(context.Index, 0);
            context.PendingOperations++;
            _uringOperations++;
            _uringDataOperations++;
        }
    }

    /// <summary>
    /// Splits the scatter list over the extents: one READV/WRITEV per file extent straight from the
    /// guest's pages (each extent boundary splits at most one buffer, so the context's iovec array of
    /// segments + extents entries always suffices); zero extents are filled here.
    /// </summary>
    private void QueueTransfers(RequestContext context, bool write, ReadOnlySpan<IoBuffer> buffers, ReadOnlySpan<FileExtent> extents, bool link)
    {
        iovec* iov = (iovec*)context.Iovecs;
        int used = 0;
        int bufferIndex = 0;
        int within = 0;
        foreach (ref readonly FileExtent extent in extents)
        {
            long remaining = extent.Length;
            int first = used;
            while (remaining > 0)
            {
                IoBuffer buffer = buffers[bufferIndex];
                int take = (int)Math.Min(buffer.Length - within, remaining);
                if (extent.Kind == FileExtentKind.Zero)
                {
                    new Span<byte>((void*)(buffer.Address + within), take).Clear();
                }
                else
                {
                    iov[used].iov_base = (void*)(buffer.Address + within);
                    iov[used].iov_len = (size_t)(uint)take;
                    used++;
                }

                within += take;
                remaining -= take;
                if (within == buffer.Length)
                {
                    bufferIndex++;
                    within = 0;
                }
            }

            if (extent.Kind == FileExtentKind.Zero)
            {
                continue;
            }

            io_uring_sqe* sqe = _uring!.TryGetSubmission();
            SetFile(sqe, extent.FileIndex);
            sqe->off = (ulong)extent.FileOffset;
            if (used - first == 1)
            {
                // One buffer (a single-page request, the common case): IORING_OP_READ/WRITE take it
                // directly, sparing the kernel the copy and import of a one-entry iovec array.
                sqe->opcode = write ? IORING_OP_WRITE : IORING_OP_READ;
                sqe->addr = (ulong)iov[first].iov_base;
                sqe->len = (uint)iov[first].iov_len;
                if (_fixedBounce && (nuint)((nint)iov[first].iov_base - _bounce!.BaseAddress) < _bounce.ByteLength)
                {
                    sqe->opcode = write ? IORING_OP_WRITE_FIXED : IORING_OP_READ_FIXED;
                    sqe->buf_index = 0;
                }
            }
            else
            {
                sqe->opcode = write ? IORING_OP_WRITEV : IORING_OP_READV;
                sqe->addr = (ulong)(iov + first);
                sqe->len = (uint)(used - first);
            }

            if (link)
            {
                sqe->flags |= IOSQE_IO_LINK;
            }

            sqe->user_data = DataUserData(context.Index, (ulong)extent.Length);
            context.PendingOperations++;
            _uringOperations++;
            _uringDataOperations++;
        }
    }

    private void SetFile(io_uring_sqe* sqe, int file)
    {
        if (_fixedFiles)
        {
            sqe->fd = file;
            sqe->flags |= IOSQE_FIXED_FILE;
        }
        else
        {
            sqe->fd = _fileDescriptors[file];
        }
    }

    private static ulong DataUserData(int context, ulong expected) =>
        (TagData << TagShift) | ((expected & ExpectedMask) << 32) | (uint)context;

    /// <summary>Hands what is queued to the kernel when the submission ring cannot take <paramref name="needed"/> more.</summary>
    private void EnsureSubmissionRoom(int needed)
    {
        IoUring uring = _uring!;
        if (uring.PendingSubmissions + (uint)needed > uring.SubmissionEntries)
        {
            SubmitQueued();
        }
    }

    /// <summary>Submits what this iteration queued without waiting (a busy ring goes round again at once).</summary>
    private void SubmitQueued()
    {
        if (_uring is { PendingSubmissions: > 0 } uring)
        {
            CheckEnter(uring.SubmitAndWait(0));
            Statistics.SetEngineCalls(uring.EnterCalls);
        }
    }

    private static void CheckEnter(int result)
    {
        // EINTR: a signal (the runtime's own) interrupted the wait; EAGAIN/EBUSY: the kernel is short
        // of resources for a moment and completions must be reaped first. The loop goes round either way.
        if (result < 0 && result != -EINTR && result != -EAGAIN && result != -EBUSY)
        {
            throw new InvalidOperationException($"io_uring_enter failed: {XenDisk.Libc.Errno.Describe(-result)}.");
        }
    }

    /// <summary>Whether completions wait to be reaped, without a system call.</summary>
    private bool EngineHasCompletions => _uring is { HasCompletions: true };

    /// <summary>
    /// Reaps every io_uring completion: finished data operations complete their requests; a fired
    /// event-channel poll takes the pending port (masked until the late unmask); a fired wake-up poll
    /// resets the eventfd. No system call.
    /// </summary>
    private void ReapEngine()
    {
        IoUring? uring = _uring;
        if (uring is null)
        {
            return;
        }

        // Requests the polled queue answered outside a reaped completion (as it was handed them, or
        // while it wrote a batch) are answered first.
        CompletePolled();
        while (uring.TryPeekCompletion(out io_uring_cqe cqe))
        {
            uring.AdvanceCompletion();
            _uringOperations--;
            ulong tag = cqe.user_data >> TagShift;
            if (tag >= TagPolledSocket)
            {
                ReapPolled(cqe, tag);
                continue;
            }

            switch (tag)
            {
                case TagData:
                    CompleteOperation(cqe);
                    break;
                case TagEventPoll:
                    _eventPollArmed = false;
                    TakeEvent();
                    break;
                case TagEventRead:
                    _eventReadArmed = false;
                    EventRead(cqe.res);
                    break;
                case TagUnmask:
                    if (cqe.res < 0)
                    {
                        // The port would stay masked and the guest's kicks unheard: unmask the slow way,
                        // which reports a broken handle as the rest of the loop does.
                        Setup.EventChannels.Unmask(Setup.LocalPort);
                    }

                    break;
                case TagWakePoll:
                    _wakePollArmed = false;
                    _waker!.Drain();
                    break;
                case TagTimeout:
                    _timeoutArmed = false;
                    break;
            }
        }

        FlushCopyOut();
    }

    private void CompleteOperation(in io_uring_cqe cqe)
    {
        _uringDataOperations--;
        RequestContext context = _contexts[(int)(uint)cqe.user_data];
        ulong expected = (cqe.user_data >> 32) & ExpectedMask;
        if (context.Result == IoStatus.Ok)
        {
            if (cqe.res < 0)
            {
                // ECANCELED (the rest of a linked chain after a failed step) maps to IoError like any other errno.
                context.Result = IoStatuses.FromErrno(-cqe.res);
            }
            else if (expected != 0 && (ulong)cqe.res != expected)
            {
                // A short transfer on a disk means the file ended under us (it was truncated): an error,
                // as the blocking path reports it.
                context.Result = IoStatus.IoError;
            }
        }

        if (--context.PendingOperations == 0)
        {
            ReleaseLeaseOf(context);
            if (_drainingForTeardown)
            {
                return;
            }

            if (_bounce is not null && context.Request.Kind == RingOperation.Read && context.Result == IoStatus.Ok)
            {
                QueueCopyOut(context);
            }
            else
            {
                Complete(context);
            }
        }
    }

    private void ReleaseLeaseOf(RequestContext context)
    {
        if (!context.Lease.IsNone)
        {
            _remap!.ReleaseLease(context.Lease);
            context.Lease = RemapLease.None;
        }
    }

    /// <summary>The event channel's descriptor is readable: take our port (it stays masked until the late unmask).</summary>
    private void TakeEvent()
    {
        int port = Setup.EventChannels.TakePending();
        if (port >= 0 && (uint)port == Setup.LocalPort)
        {
            _portMasked = true;
        }
    }

    /// <summary>The read of the event channel's descriptor completed: the port it delivered stays masked
    /// until the late unmask. A descriptor that refuses to wait in a read (EAGAIN: a kernel that does not
    /// poll a non-blocking file for io_uring) is polled from then on.</summary>
    private void EventRead(int result)
    {
        if (result > 0)
        {
            int port = Setup.EventChannels.PendingFromRead(new ReadOnlySpan<byte>((void*)(_controlMemory + EventReadOffset), result));
            if (port >= 0 && (uint)port == Setup.LocalPort)
            {
                _portMasked = true;
            }
        }
        else if (result == -EAGAIN)
        {
            _eventReadSize = 0;
        }
        else if (result != -EINTR && result != -ECANCELED)
        {
            throw new InvalidOperationException($"Reading the event channel failed: {Marshal.GetPInvokeErrorMessage(-result)} (errno {-result}).");
        }
    }

    /// <summary>
    /// The late unmask: queued as a write of the port to the evtchn descriptor, submitted by the loop's
    /// next io_uring_enter, where the handle takes writes; otherwise xenevtchn_unmask at once. An event
    /// that arrived while the port was masked is delivered when the unmask lands, so a later unmask
    /// only delays a wake-up, never loses one.
    /// </summary>
    private void UnmaskPort()
    {
        if (_uring is not null && _eventReadSize > 0
            && Setup.EventChannels.TryFormatUnmask(Setup.LocalPort, new Span<byte>((void*)(_controlMemory + UnmaskOffset), ControlMemoryBytes - UnmaskOffset), out int length))
        {
            QueueEventChannelIo(IORING_OP_WRITE, UnmaskOffset, length, TagUnmask);
            return;
        }

        Setup.EventChannels.Unmask(Setup.LocalPort);
    }

    /// <summary>Before the io_uring closes: cancel the armed event read and see its completion, so that
    /// the kernel is done with its buffer before the buffer is freed.</summary>
    private void CancelEventRead()
    {
        IoUring? uring = _uring;
        if (uring is null || !_eventReadArmed)
        {
            return;
        }

        io_uring_sqe* sqe = NextControlSubmission();
        sqe->opcode = IORING_OP_ASYNC_CANCEL;
        sqe->addr = TagEventRead << TagShift;
        sqe->user_data = TagCancel << TagShift;
        _uringOperations++;
        for (int attempt = 0; attempt < 100 && _eventReadArmed; attempt++)
        {
            int result = uring.SubmitAndWait(1);
            if (result < 0 && result != -EINTR && result != -EAGAIN && result != -EBUSY)
            {
                return;
            }

            while (uring.TryPeekCompletion(out io_uring_cqe cqe))
            {
                uring.AdvanceCompletion();
                if (cqe.user_data >> TagShift == TagEventRead)
                {
                    _eventReadArmed = false;
                }
            }
        }
    }

    /// <summary>
    /// Sleeps until a guest kick, a completion, a wake-up or <paramref name="timeoutMilliseconds"/>: with
    /// io_uring, one io_uring_enter that also submits what is queued; otherwise one poll(2).
    /// </summary>
    private void WaitForWork(int timeoutMilliseconds)
    {
        IoUring? uring = _uring;
        if (uring is null)
        {
            PollForWork(timeoutMilliseconds);
            return;
        }

        ArmPolled();

        if (_eventReadSize > 0)
        {
            if (!_eventReadArmed && !_eventPollArmed)
            {
                QueueEventChannelIo(IORING_OP_READ, EventReadOffset, _eventReadSize, TagEventRead);
                _eventReadArmed = true;
            }
        }
        else if (!_eventPollArmed && !_eventReadArmed)
        {
            ArmPoll(_eventFd, TagEventPoll);
            _eventPollArmed = true;
        }

        if (!_wakePollArmed)
        {
            ArmPoll(_waker!.FileDescriptor, TagWakePoll);
            _wakePollArmed = true;
        }

        if (timeoutMilliseconds != Timeout.Infinite && !_timeoutArmed)
        {
            // The deadline of idle persistent grants only moves later, so a timeout armed earlier can
            // only fire early, and the loop then re-arms it: no cancellation is needed.
            long* ts = (long*)(_controlMemory + TimespecOffset);
            ts[0] = timeoutMilliseconds / 1000;
            ts[1] = (timeoutMilliseconds % 1000) * 1_000_000L;
            io_uring_sqe* sqe = NextControlSubmission();
            sqe->opcode = IORING_OP_TIMEOUT;
            sqe->addr = (ulong)(_controlMemory + TimespecOffset);
            sqe->len = 1;
            sqe->user_data = TagTimeout << TagShift;
            _uringOperations++;
            _timeoutArmed = true;
        }

        CheckEnter(uring.SubmitAndWait(1));
        Statistics.SetEngineCalls(uring.EnterCalls);
    }

    private void ArmPoll(int fd, ulong tag)
    {
        io_uring_sqe* sqe = NextControlSubmission();
        sqe->opcode = IORING_OP_POLL_ADD;
        sqe->fd = fd;
        sqe->poll_events = (ushort)POLLIN;
        sqe->user_data = tag << TagShift;
        _uringOperations++;
    }

    /// <summary>
    /// A read or write of the event channel's descriptor from the ring's control memory (the pending
    /// port read, the unmask write). Offset -1: the descriptor is a stream, not a file with positions.
    /// </summary>
    private void QueueEventChannelIo(byte opcode, int controlOffset, int length, ulong tag)
    {
        io_uring_sqe* sqe = NextControlSubmission();
        sqe->opcode = opcode;
        sqe->fd = _eventFd;
        sqe->addr = (ulong)(_controlMemory + controlOffset);
        sqe->len = (uint)length;
        sqe->off = ulong.MaxValue;
        sqe->user_data = tag << TagShift;
        _uringOperations++;
    }

    private io_uring_sqe* NextControlSubmission()
    {
        EnsureSubmissionRoom(1);
        return _uring!.TryGetSubmission();
    }

    private void PollForWork(int timeoutMilliseconds)
    {
        pollfd* fds = stackalloc pollfd[2];
        fds[0] = new pollfd { fd = Setup.EventChannels.FileDescriptor, events = POLLIN };
        fds[1] = new pollfd { fd = _waker!.FileDescriptor, events = POLLIN };
        int ready = poll(fds, 2, timeoutMilliseconds);
        if (ready <= 0)
        {
            // 0: time-out; EINTR: go round. Anything else would be a broken descriptor, which the next
            // wait reports again; the control plane's teardown ends the ring.
            return;
        }

        if (fds[0].revents != 0)
        {
            TakeEvent();
        }

        if (fds[1].revents != 0)
        {
            _waker.Drain();
        }
    }

    /// <summary>
    /// Before any guest page is unmapped after a fault: cancel what the kernel still holds and wait
    /// until every data operation's completion has been seen, so that no read can land in (and no write
    /// read from) a page after it went back to the guest.
    /// </summary>
    private void DrainEngineForTeardown()
    {
        IoUring? uring = _uring;
        if (uring is null)
        {
            return;
        }

        _drainingForTeardown = true;
        CancelPolled();
        if (_uringDataOperations > 0)
        {
            io_uring_sqe* sqe = NextControlSubmission();
            sqe->opcode = IORING_OP_ASYNC_CANCEL;
            sqe->cancel_flags = IORING_ASYNC_CANCEL_ALL | IORING_ASYNC_CANCEL_ANY;
            sqe->user_data = TagCancel << TagShift;
            _uringOperations++;
        }

        while (_uringDataOperations > 0)
        {
            int result = uring.SubmitAndWait(1);
            if (result < 0 && result != -EINTR && result != -EAGAIN && result != -EBUSY)
            {
                throw new InvalidOperationException($"io_uring_enter failed while draining: errno {-result}.");
            }

            ReapEngine();
        }
    }
}
