using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using XenDisk.Storage.Iscsi.Interop;
using Tmds.Linux;
using static Tmds.Linux.LibC;

namespace XenDisk.Storage.Iscsi;

/// <summary>
/// One logged-in iSCSI session to one LUN, driven through libiscsi's asynchronous interface by one
/// event loop that owns the libiscsi context: it waits on the context's socket (whose descriptor
/// changes when libiscsi reconnects) and an eventfd that other threads write when they queue a command,
/// issues queued commands, runs libiscsi's completions, and cancels any command older than
/// <see cref="IscsiOptions.CommandTimeout"/>. The loop is either the session's own thread (the blocking
/// session of a device: tools, control commands, the slow path, whose callers block only on their own
/// pooled <see cref="IscsiCommand"/>) or, for a driven session (<see cref="Connect"/> with
/// <c>driven</c>), the event loop of whoever owns it: a ring thread, through <see cref="IscsiQueue"/>,
/// which waits on <see cref="FileDescriptor"/> and <see cref="WakeDescriptor"/> in its own io_uring,
/// calls <see cref="Service"/>, <see cref="Submit"/>s commands and gets them back through the command's
/// queue on the same thread. Many commands are in flight at once, up to the queue depth.
/// <para>
/// A lost connection is libiscsi's to repair: it logs in again on a fresh socket with the same
/// parameters and re-sends every command still in flight (the context pointer stays the same); a
/// reserved session re-sends them itself, after its reservation is back (below). Commands
/// that a reconnect cannot save fail with their deadline, so a caller always gets an answer.
/// UNIT ATTENTION (reported after a target restart or a LUN resize), BUSY and TASK SET FULL are retried
/// until the deadline (SAM-5 5.3: the command was not executed).
/// </para>
/// <para>
/// A session that writes under a persistent reservation (<see cref="ReservationKey"/>) comes back from a
/// reconnect as a new I_T nexus, unregistered, and after a target restart the reservation itself is
/// gone: the reservation is taken again before anything else is written. While the session is logged
/// out and until the re-take has finished, the loop holds every command it is given (they wait, with
/// their deadlines, beside the retries) except the re-take's own, which runs in a command slot kept
/// for it alone, so a queue full of held commands can never starve it. The commands that were on the
/// wire when the connection dropped are held too: a reserved session turns libiscsi's automatic
/// reconnect off (iscsi_set_noautoreconnect), so that a lost connection cancels them back to the loop
/// instead of being re-sent by libiscsi straight after the new login; the loop then starts the
/// reconnect itself and re-sends them (<see cref="Resent"/>) only once the reservation is back.
/// </para>
/// Thread-safety: every libiscsi call after the login is made on the loop's thread; <see cref="Execute"/>,
/// <see cref="Rent"/>, <see cref="TryRent"/>, <see cref="RentControl"/> and <see cref="Return"/> may be
/// called from any thread; the driven members only from the loop that drives the session.
/// </summary>
internal sealed unsafe class IscsiSession : IDisposable
{
    /// <summary>iovecs per command: a blkif request has at most 256 indirect segments (blkif.h), and tools use one.</summary>
    internal const int MaxSegments = 256;

    /// <summary>The loop's tick while commands are in flight: how late a deadline may be noticed.</summary>
    private const int TickMilliseconds = 100;

    /// <summary>The loop's tick while a retry waits: a BUSY target is asked again after 10 ms (<see cref="BusyRetryTicks"/>).</summary>
    private const int RetryTickMilliseconds = 10;

    /// <summary>iscsi_which_events returns 0 while a reconnect waits; iscsi.h asks for at least 100 ms before asking again.</summary>
    private const int ReconnectWaitMilliseconds = 100;

    /// <summary>A BUSY or TASK SET FULL target is asked again after this long, not in a tight loop.</summary>
    private static readonly long BusyRetryTicks = Stopwatch.Frequency / 100;

    private readonly nint _context;
    private readonly int _lun;
    private readonly long _timeoutTicks;
    private readonly IscsiCommand[] _commands;
    private readonly object _lock = new();
    private readonly int[] _free;
    private int _freeCount;
    private readonly int[] _queue;
    private int _queueHead;
    private int _queueCount;
    private readonly int[] _retries;
    private int _retryCount;
    private readonly int _eventFd;
    private readonly bool _driven;
    private readonly Thread? _thread;
    private volatile bool _stopping;
    private bool _closed;
    private int _inFlight;
    private bool _loggedIn = true;
    private long _reconnects;

    // Owned by the loop: when libiscsi's timer work is next due, when deadlines are next checked, and
    // whether a reconnect waits (iscsi_which_events said 0).
    private long _nextScan;
    private long _nextExpiryCheck;
    private bool _reconnectWaiting;
    private int _connectionGeneration;

    // Owned by the loop: libiscsi's automatic reconnect is off (a reserved session reconnects itself).
    private bool _manualReconnect;
    private long _resent;

    /// <summary>The command slot kept for reservation commands (index <c>depth</c>), one user at a time.</summary>
    private readonly int _controlIndex;
    private readonly SemaphoreSlim _controlGate = new(1, 1);
    private ulong _reservationKey;

    // Owned by the loop thread: a re-take of the reservation is running, and another is needed after it
    // (the session reconnected again meanwhile).
    private bool _retakeRunning;
    private bool _retakeAgain;

    /// <summary>Set by the re-take when it has finished, for the loop to release the held commands.</summary>
    private volatile bool _retakeDone;

    private IscsiSession(nint context, IscsiUrl url, IscsiOptions options, bool driven)
    {
        _driven = driven;
        _context = context;
        _lun = url.Lun;
        Url = url;
        _timeoutTicks = (long)(options.CommandTimeout.TotalSeconds * Stopwatch.Frequency);
        int depth = options.QueueDepth;
        // One slot more than the queue depth: the reservation's own, never handed out by Rent.
        _controlIndex = depth;
        _commands = new IscsiCommand[depth + 1];
        _free = new int[depth];
        _queue = new int[depth + 1];
        _retries = new int[depth + 1];
        for (int i = 0; i <= depth; i++)
        {
            _commands[i] = new IscsiCommand(this, i, i == _controlIndex ? 1 : MaxSegments);
        }
        for (int i = 0; i < depth; i++)
        {
            _free[i] = depth - 1 - i;
        }
        _freeCount = depth;
        _eventFd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (_eventFd < 0)
        {
            int error = errno;
            foreach (IscsiCommand command in _commands)
            {
                command.Dispose();
            }
            throw new StorageException($"{url}: cannot create the session's eventfd ({XenDisk.Libc.Errno.Describe(error)}).", error);
        }
        _nextScan = Stopwatch.GetTimestamp() + Stopwatch.Frequency;
        if (!driven)
        {
            _thread = new Thread(Run) { IsBackground = true, Name = $"iscsi {url.TargetName}/{url.Lun}" };
            _thread.Start();
        }
    }

    public IscsiUrl Url { get; }

    /// <summary>How many times libiscsi re-established the session (a new connection and login) since the first login.</summary>
    public long Reconnects => Interlocked.Read(ref _reconnects);

    /// <summary>Commands that were in flight when a reserved session's connection dropped, and that the session sent again after it had taken the reservation back.</summary>
    public long Resent => Interlocked.Read(ref _resent);

    /// <summary>
    /// The key this session's host holds the LUN's persistent reservation under, or 0: set once the
    /// reservation is taken, cleared before it is released. While it is set, a reconnect takes the
    /// reservation again before any other command is issued.
    /// </summary>
    public ulong ReservationKey
    {
        get => Volatile.Read(ref _reservationKey);
        set => Volatile.Write(ref _reservationKey, value);
    }

    /// <summary>
    /// The session holding the host's reservation on this LUN when this one is a further connection of
    /// the same host (a ring's own queue): after a reconnect this session registers its new nexus and
    /// asks the owner to take the reservation again, never reserving itself, so that closing it never
    /// releases what the owner holds (<see cref="IscsiReservation.RegisterNexus"/>).
    /// </summary>
    internal IscsiSession? ReservationOwner { get; set; }

    /// <summary>
    /// A driven session with no loop to drive it (being opened or closed): <see cref="Execute"/> then
    /// runs the loop itself on the calling thread until its command is answered.
    /// </summary>
    internal bool SelfDriving { get; set; }

    /// <summary>For tests: called on the loop thread as each command is handed to libiscsi (operation, service action or page code).</summary>
    internal Action<IscsiOperation, int>? Issued { get; set; }

    /// <summary>Commands are held, not issued: the LUN is reserved and the session is logged out or taking the reservation again.</summary>
    private bool Holding => ReservationKey != 0 && (!_loggedIn || _retakeRunning);

    /// <summary>
    /// Logs in to the LUN (TCP connect, iSCSI login with CHAP when configured, LUN check) on the calling
    /// thread, then starts the event loop. Throws <see cref="StorageException"/> with one line for the
    /// operator: the URL, what failed, never a credential.
    /// </summary>
    public static IscsiSession Connect(IscsiUrl url, IscsiOptions options, bool driven = false)
    {
        ArgumentNullException.ThrowIfNull(url);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        IscsiChap? chap = options.Credentials(url);
        nint context;
        try
        {
            context = LibIscsi.iscsi_create_context(options.InitiatorName);
        }
        catch (DllNotFoundException e)
        {
            throw new StorageException($"{url}: {LibIscsi.LibraryName} is not installed (Debian package {LibIscsi.PackageName}).", inner: e);
        }
        if (context == 0)
        {
            throw new StorageException($"{url}: cannot create an iSCSI context (initiator name \"{options.InitiatorName}\").");
        }
        try
        {
            Check(context, LibIscsi.iscsi_set_targetname(context, url.TargetName), url, "setting the target name");
            Check(context, LibIscsi.iscsi_set_session_type(context, LibIscsi.ISCSI_SESSION_NORMAL), url, "setting the session type");
            Check(context, LibIscsi.iscsi_set_isid_random(context, (uint)Random.Shared.Next(1, 1 << 24), 0), url, "setting the session id");
            Check(context, LibIscsi.iscsi_set_header_digest(context, options.HeaderDigest ? LibIscsi.ISCSI_HEADER_DIGEST_CRC32C : LibIscsi.ISCSI_HEADER_DIGEST_NONE), url, "setting the header digest");
            if (chap != null)
            {
                Check(context, LibIscsi.iscsi_set_initiator_username_pwd(context, chap.User, chap.Secret), url, "setting the CHAP credentials");
            }
            // The login runs libiscsi's own poll loop; its PDU timeout bounds it. I/O commands get the
            // session's own deadlines instead (0: libiscsi sets none).
            LibIscsi.iscsi_set_timeout(context, (int)Math.Ceiling(options.ConnectTimeout.TotalSeconds));
            if (LibIscsi.iscsi_full_connect_sync(context, url.Portal, url.Lun) != 0)
            {
                throw new StorageException(IscsiErrors.DescribeLoginFailure(url, Error(context, chap), chap, options.InitiatorName));
            }
            LibIscsi.iscsi_set_timeout(context, 0);
            LibIscsi.iscsi_set_reconnect_max_retries(context, -1);
            return new IscsiSession(context, url, options, driven);
        }
        catch
        {
            LibIscsi.iscsi_destroy_context(context);
            throw;
        }
    }

    /// <summary>Takes a free command slot, waiting while all are in use (back-pressure, not allocation).</summary>
    public IscsiCommand Rent()
    {
        lock (_lock)
        {
            while (_freeCount == 0)
            {
                Monitor.Wait(_lock);
            }
            return _commands[_free[--_freeCount]];
        }
    }

    /// <summary>A free command slot, or null when all are in use (the caller then takes another way, never waits).</summary>
    public IscsiCommand? TryRent()
    {
        lock (_lock)
        {
            return _freeCount == 0 ? null : _commands[_free[--_freeCount]];
        }
    }

    /// <summary>
    /// Takes the reservation commands' own slot, waiting while another reservation command uses it. It is
    /// never one of the queue's slots, so taking the reservation again cannot wait for them.
    /// </summary>
    public IscsiCommand RentControl()
    {
        _controlGate.Wait();
        return _commands[_controlIndex];
    }

    public void Return(IscsiCommand command)
    {
        if (command.Index == _controlIndex)
        {
            _controlGate.Release();
            return;
        }
        lock (_lock)
        {
            _free[_freeCount++] = command.Index;
            Monitor.Pulse(_lock);
        }
    }

    /// <summary>Queues <paramref name="command"/> for the loop and waits for its outcome (bounded by the command timeout).</summary>
    public ScsiOutcome Execute(IscsiCommand command)
    {
        command.Queue = null;
        command.Done.Reset();
        command.Attempts = 0;
        command.ControlDataLength = 0;
        command.DeadlineTimestamp = Stopwatch.GetTimestamp() + _timeoutTicks;
        bool wake;
        lock (_lock)
        {
            if (_closed)
            {
                return new ScsiOutcome(ScsiStatus.CANCELLED, 0, 0);
            }
            _queue[(_queueHead + _queueCount) % _queue.Length] = command.Index;
            wake = _queueCount++ == 0;
        }
        if (wake)
        {
            // The loop empties the whole queue when it wakes, so only the first command queued since
            // then needs to write the eventfd: one system call per batch, not per command.
            ulong one = 1;
            write(_eventFd, &one, sizeof(ulong));
        }
        if (_driven && SelfDriving)
        {
            Work();
            while (!command.Done.IsSet)
            {
                if (!RunOnce())
                {
                    // Nothing left to wait on: the session is finished, and answers what it holds.
                    _stopping = true;
                    Shutdown();
                    break;
                }
                Work();
            }
        }
        command.Done.Wait();
        return command.Outcome;
    }

    private void Run()
    {
        while (true)
        {
            Work();
            if (_stopping || !RunOnce())
            {
                break;
            }
        }
        Shutdown();
    }

    /// <summary>
    /// One wait of the session's own loop (or of a driven session driving itself): poll(2) on the
    /// eventfd and the socket, then service what fired. False when poll itself fails: nothing sane is
    /// left to wait on, and the caller fails what is in flight rather than spin.
    /// </summary>
    private bool RunOnce()
    {
        pollfd* fds = stackalloc pollfd[2];
        int events = Events;
        int fd = events != 0 ? LibIscsi.iscsi_get_fd(_context) : -1;
        fds[0] = new pollfd { fd = _eventFd, events = PollEvents.POLLIN };
        fds[1] = new pollfd { fd = fd, events = (short)events };
        int timeout = TimerMilliseconds;
        int ready = poll(fds, 2, timeout == Timeout.Infinite ? 1000 : timeout);
        if (ready < 0 && errno != EINTR)
        {
            return false;
        }
        if ((fds[0].revents & PollEvents.POLLIN) != 0)
        {
            DrainWake();
        }
        if (fd >= 0 && fds[1].revents != 0)
        {
            ServiceSocket(fds[1].revents);
        }
        return true;
    }

    /// <summary>
    /// The loop's work between waits: finish a re-take, libiscsi's timer work (its timeout scan and a
    /// deferred reconnect's retry both run in iscsi_service with no events, iscsi.h "Timeout Handling"),
    /// deadlines, then the commands queued by other threads and the retries that are due.
    /// </summary>
    private void Work()
    {
        bool reserved = ReservationKey != 0;
        if (reserved != _manualReconnect)
        {
            // Turning it back on also starts a reconnect libiscsi deferred meanwhile.
            _manualReconnect = reserved;
            LibIscsi.iscsi_set_noautoreconnect(_context, reserved ? 1 : 0);
        }
        if (_retakeDone)
        {
            _retakeDone = false;
            FinishRetake();
        }
        long now = Stopwatch.GetTimestamp();
        if (_reconnectWaiting || now >= _nextScan)
        {
            LibIscsi.iscsi_service(_context, 0);
            ReconnectIfDeferred();
            NoteReconnect();
            _nextScan = now + Stopwatch.Frequency;
        }
        if (_inFlight > 0 && now >= _nextExpiryCheck)
        {
            CancelExpired(now);
            _nextExpiryCheck = now + (Stopwatch.Frequency * TickMilliseconds / 1000);
        }
        IssueQueued();
        IssueRetries(now);
    }

    /// <summary>A failed service (the target closed the socket) starts libiscsi's reconnect; the commands in flight stay queued in the context and are re-sent after the new login.</summary>
    private void ServiceSocket(int revents)
    {
        LibIscsi.iscsi_service(_context, revents);
        ReconnectIfDeferred();
        NoteReconnect();
    }

    /// <summary>
    /// With the automatic reconnect off, a lost connection makes libiscsi cancel every command (each
    /// comes back through <see cref="Completed"/> as cancelled and is held for re-sending) and defer the
    /// reconnect. Switching the automatic reconnect on starts a deferred one (and does nothing
    /// otherwise), and switching it off again at once means that what the new login would re-send is
    /// nothing: the loop re-sends the held commands itself after the reservation's re-take. libiscsi
    /// says nothing of a deferral, so this runs after every service: two stores, no system call.
    /// </summary>
    private void ReconnectIfDeferred()
    {
        if (_manualReconnect)
        {
            LibIscsi.iscsi_set_noautoreconnect(_context, 0);
            LibIscsi.iscsi_set_noautoreconnect(_context, 1);
        }
    }

    private void DrainWake()
    {
        ulong value;
        read(_eventFd, &value, sizeof(ulong));
    }

    /// <summary>Driven: the context's socket, to wait on for <see cref="Events"/>; it changes when libiscsi reconnects.</summary>
    public int FileDescriptor => LibIscsi.iscsi_get_fd(_context);

    /// <summary>Driven: iscsi_which_events, the poll events the context waits for; 0 while a reconnect is deferred (the timer then drives it).</summary>
    public int Events
    {
        get
        {
            int events = LibIscsi.iscsi_which_events(_context);
            if (_reconnectWaiting != (events == 0))
            {
                _reconnectWaiting = events == 0;
                _connectionGeneration++;
            }
            return events;
        }
    }

    /// <summary>Driven: changes whenever the socket may have been replaced (the session logged out or in, a reconnect started or stopped waiting).</summary>
    public int ConnectionGeneration => _connectionGeneration;

    /// <summary>Driven: the eventfd other threads write when they queue a command (the reservation's re-take).</summary>
    public int WakeDescriptor => _eventFd;

    /// <summary>How soon the loop must run without events: a deferred reconnect (iscsi.h asks for 100 ms), a retry, deadlines in flight.</summary>
    public int TimerMilliseconds =>
        _reconnectWaiting ? ReconnectWaitMilliseconds
        : _retryCount > 0 ? RetryTickMilliseconds
        : _inFlight > 0 ? TickMilliseconds
        : Timeout.Infinite;

    /// <summary>Driven: the socket reported <paramref name="revents"/> (0: none), or the wake descriptor fired.</summary>
    public void Service(int revents, bool woken)
    {
        if (woken)
        {
            DrainWake();
        }
        if (revents != 0)
        {
            ServiceSocket(revents);
        }
        Work();
    }

    /// <summary>
    /// Driven, before the loop sleeps: libiscsi only queues a command's PDUs; they are written when the
    /// socket is serviced for POLLOUT. Doing that here, once per batch, writes them at once instead of
    /// waiting a round trip through the poll for a socket that is almost always writable. Only while
    /// logged in: before that, POLLOUT means a connect completed.
    /// </summary>
    public void PrepareToWait()
    {
        if (_loggedIn && (LibIscsi.iscsi_which_events(_context) & PollEvents.POLLOUT) != 0)
        {
            ServiceSocket(PollEvents.POLLOUT);
        }
    }

    /// <summary>Driven: issues a command rented with <see cref="TryRent"/>; its outcome comes back through its queue, on this thread.</summary>
    public void Submit(IscsiCommand command)
    {
        command.Attempts = 0;
        command.ControlDataLength = 0;
        command.DeadlineTimestamp = Stopwatch.GetTimestamp() + _timeoutTicks;
        if (Holding)
        {
            Hold(command);
            return;
        }
        Issue(command);
    }

    /// <summary>Driven: cancels every command in flight and fails every retry; each is answered before this returns.</summary>
    public void CancelAll()
    {
        foreach (IscsiCommand command in _commands)
        {
            if (command.InFlight)
            {
                Cancel(command);
            }
        }
        IssueRetries(long.MaxValue);
    }

    /// <summary>
    /// Counts a completed reconnect: the session was seen logged out (libiscsi replaced the connection)
    /// and is logged in again. A reserved LUN's reservation is then taken again before anything else.
    /// </summary>
    private void NoteReconnect()
    {
        bool loggedIn = LibIscsi.iscsi_is_logged_in(_context) != 0;
        bool reconnected = loggedIn && !_loggedIn;
        if (loggedIn != _loggedIn)
        {
            _connectionGeneration++;
        }
        _loggedIn = loggedIn;
        if (!reconnected)
        {
            return;
        }
        Interlocked.Increment(ref _reconnects);
        if (ReservationKey == 0)
        {
            return;
        }
        if (_retakeRunning)
        {
            _retakeAgain = true;
            return;
        }
        StartRetake();
    }

    /// <summary>
    /// Takes the reservation again on a pool thread (the commands are synchronous, and the loop must go
    /// on running them); the loop holds every other command until <see cref="FinishRetake"/>.
    /// </summary>
    private void StartRetake()
    {
        _retakeRunning = true;
        ThreadPool.UnsafeQueueUserWorkItem(static session =>
        {
            ulong key = session.ReservationKey;
            if (key != 0 && !session._stopping)
            {
                // Still ours: this nexus registers and, after a target restart, reserves again. Another
                // host's: the held writes meet RESERVATION CONFLICT and fail, as they must.
                if (session.ReservationOwner is { } owner)
                {
                    IscsiReservation.ReassertNexus(owner, session, key, session._timeoutTicks);
                }
                else
                {
                    IscsiReservation.Reassert(session, key);
                }
            }
            session._retakeDone = true;
            ulong one = 1;
            write(session._eventFd, &one, sizeof(ulong));
        }, this, preferLocal: false);
    }

    private void FinishRetake()
    {
        if (_retakeAgain && !_stopping)
        {
            // The session dropped again while the re-take ran: its registration may be on the old nexus.
            _retakeAgain = false;
            StartRetake();
            return;
        }
        _retakeRunning = false;
    }

    private void IssueQueued()
    {
        while (true)
        {
            int index;
            lock (_lock)
            {
                if (_queueCount == 0)
                {
                    return;
                }
                index = _queue[_queueHead];
                _queueHead = (_queueHead + 1) % _queue.Length;
                _queueCount--;
            }
            IscsiCommand command = _commands[index];
            if (index != _controlIndex && Holding)
            {
                Hold(command);
                continue;
            }
            Issue(command);
        }
    }

    /// <summary>Held beside the retries until the reservation is back; its deadline still runs.</summary>
    private void Hold(IscsiCommand command)
    {
        command.Outcome = new ScsiOutcome(ScsiStatus.CANCELLED, 0, 0);
        command.RetryPending = true;
        command.RetryAt = 0;
        _retries[_retryCount++] = command.Index;
    }

    private void IssueRetries(long now)
    {
        for (int i = 0; i < _retryCount;)
        {
            IscsiCommand command = _commands[_retries[i]];
            if (!_stopping && now < command.DeadlineTimestamp && (command.RetryAt > now || (command.Index != _controlIndex && Holding)))
            {
                i++;
                continue;
            }
            _retries[i] = _retries[--_retryCount];
            command.RetryPending = false;
            if (_stopping || now >= command.DeadlineTimestamp)
            {
                Finish(command, command.Outcome);
            }
            else
            {
                Issue(command);
            }
        }
    }

    private void Issue(IscsiCommand command)
    {
        if (_stopping)
        {
            Finish(command, new ScsiOutcome(ScsiStatus.CANCELLED, 0, 0));
            return;
        }
        if (command.Attempts > 0 && command.LostWithConnection)
        {
            Interlocked.Increment(ref _resent);
        }
        command.Attempts++;
        command.CancelRequested = false;
        command.LostWithConnection = false;
        command.IssuedAfterReconnects = _reconnects;
        Issued?.Invoke(command.Operation, command.Code);
        delegate* unmanaged<nint, int, nint, nint, void> callback = &OnCompleted;
        nint data = GCHandle.ToIntPtr(command.Handle);
        nint task = command.Operation switch
        {
            IscsiOperation.Read => LibIscsi.iscsi_read16_iov_task(_context, _lun, command.Lba, command.Length, command.BlockSize,
                0, 0, 0, 0, 0, callback, data, command.Iov, command.IovCount),
            IscsiOperation.Write => LibIscsi.iscsi_write16_iov_task(_context, _lun, command.Lba, null, command.Length, command.BlockSize,
                0, 0, 0, 0, 0, callback, data, command.Iov, command.IovCount),
            IscsiOperation.SynchronizeCache => LibIscsi.iscsi_synchronizecache16_task(_context, _lun, 0, 0, 0, 0, callback, data),
            IscsiOperation.Unmap => LibIscsi.iscsi_unmap_task(_context, _lun, 0, 0, command.Unmap, 1, callback, data),
            IscsiOperation.ReadCapacity => LibIscsi.iscsi_readcapacity16_task(_context, _lun, callback, data),
            IscsiOperation.Inquiry => LibIscsi.iscsi_inquiry_task(_context, _lun, command.Code >= 0 ? 1 : 0, Math.Max(command.Code, 0), 255, callback, data),
            IscsiOperation.PersistentReserveIn => LibIscsi.iscsi_persistent_reserve_in_task(_context, _lun, command.Code, IscsiCommand.ControlDataCapacity, callback, data),
            IscsiOperation.PersistentReserveOut => LibIscsi.iscsi_persistent_reserve_out_task(_context, _lun, command.Code, 0, command.Type, command.ReserveOut, callback, data),
            _ => 0,
        };
        if (task == 0)
        {
            // libiscsi refused to queue it (not logged in and no reconnect pending, out of memory).
            Finish(command, new ScsiOutcome(ScsiStatus.ERROR, 0, 0));
            return;
        }
        command.Task = task;
        command.InFlight = true;
        _inFlight++;
    }

    [UnmanagedCallersOnly]
    private static void OnCompleted(nint iscsi, int status, nint commandData, nint privateData)
    {
        IscsiCommand command = (IscsiCommand)GCHandle.FromIntPtr(privateData).Target!;
        try
        {
            command.Session.Completed(command, status, commandData);
        }
        catch (Exception e)
        {
            // An exception must not unwind through libiscsi's C frames; the command fails instead.
            Trace.WriteLine($"iSCSI completion failed: {e}");
            Finish(command, new ScsiOutcome(ScsiStatus.ERROR, 0, 0));
        }
    }

    /// <summary>Runs on the loop thread inside iscsi_service (or iscsi_scsi_cancel_task).</summary>
    private void Completed(IscsiCommand command, int status, nint task)
    {
        int senseKey = 0;
        int ascq = 0;
        if (task != 0)
        {
            if (status == ScsiStatus.CHECK_CONDITION)
            {
                senseKey = ScsiTask.SenseKey(task);
                ascq = ScsiTask.SenseAscq(task);
            }
            else if (status == ScsiStatus.GOOD && command.Operation is IscsiOperation.ReadCapacity or IscsiOperation.Inquiry or IscsiOperation.PersistentReserveIn)
            {
                ReadOnlySpan<byte> dataIn = ScsiTask.DataIn(task);
                int length = Math.Min(dataIn.Length, command.ControlData.Length);
                dataIn[..length].CopyTo(command.ControlData);
                command.ControlDataLength = length;
            }
            LibIscsi.scsi_free_scsi_task(task);
        }
        if (command.InFlight)
        {
            command.InFlight = false;
            _inFlight--;
        }
        command.Task = 0;
        ScsiOutcome outcome = new(status, senseKey, ascq);
        long now = Stopwatch.GetTimestamp();
        bool retry = !_stopping && now < command.DeadlineTimestamp && status switch
        {
            ScsiStatus.CHECK_CONDITION => senseKey == ScsiSenseKey.UNIT_ATTENTION,
            ScsiStatus.BUSY or ScsiStatus.TASK_SET_FULL => true,
            // Not cancelled by this loop: libiscsi gave it back when a reserved session's connection
            // dropped (ReconnectIfDeferred); it goes again once the reservation is back.
            ScsiStatus.CANCELLED => _manualReconnect && !command.CancelRequested,
            // Sent before a reconnect and re-sent by libiscsi on the new, not yet registered nexus (or
            // answered while the reservation is being taken again): once more after the re-take. A
            // conflict met after it is another host's reservation, and final.
            ScsiStatus.RESERVATION_CONFLICT => ReservationKey != 0 && command.Index != _controlIndex
                && (command.IssuedAfterReconnects != _reconnects || Holding),
            _ => false,
        };
        if (retry)
        {
            command.LostWithConnection = status == ScsiStatus.CANCELLED;
            command.Outcome = outcome;
            command.RetryPending = true;
            command.RetryAt = status == ScsiStatus.CHECK_CONDITION ? now : now + BusyRetryTicks;
            _retries[_retryCount++] = command.Index;
            return;
        }
        Finish(command, outcome);
    }

    private static void Finish(IscsiCommand command, ScsiOutcome outcome)
    {
        command.Outcome = outcome;
        if (command.Queue is { } queue)
        {
            queue.Finished(command);
            return;
        }
        command.Done.Set();
    }

    /// <summary>Cancels every command past its deadline; libiscsi runs its callback at once with SCSI_STATUS_CANCELLED.</summary>
    private void CancelExpired(long now)
    {
        foreach (IscsiCommand command in _commands)
        {
            if (command.InFlight && now >= command.DeadlineTimestamp)
            {
                Cancel(command);
            }
        }
    }

    private void Cancel(IscsiCommand command)
    {
        command.CancelRequested = true;
        nint task = command.Task;
        if (LibIscsi.iscsi_scsi_cancel_task(_context, task) != 0 && command.InFlight)
        {
            // libiscsi no longer holds the command (so it will not touch its buffers again) yet never
            // completed it: answer it here. The task is left, not freed: freeing what libiscsi may
            // have freed would be worse than one leaked task.
            command.InFlight = false;
            command.Task = 0;
            _inFlight--;
            Finish(command, new ScsiOutcome(ScsiStatus.CANCELLED, 0, 0));
        }
    }

    private void Shutdown()
    {
        foreach (IscsiCommand command in _commands)
        {
            if (command.InFlight)
            {
                Cancel(command);
            }
        }
        IssueRetries(long.MaxValue);
        lock (_lock)
        {
            _closed = true;
        }
        IssueQueued();
    }

    public void Dispose()
    {
        if (_stopping)
        {
            return;
        }
        _stopping = true;
        if (_thread is null)
        {
            // Driven: the caller is the loop; nothing runs the session but this call.
            Shutdown();
        }
        else
        {
            ulong one = 1;
            write(_eventFd, &one, sizeof(ulong));
            _thread.Join();
        }
        LibIscsi.iscsi_destroy_context(_context);
        close(_eventFd);
        foreach (IscsiCommand command in _commands)
        {
            command.Dispose();
        }
        _controlGate.Dispose();
    }

    private static void Check(nint context, int result, IscsiUrl url, string what)
    {
        if (result != 0)
        {
            throw new StorageException($"{url}: libiscsi refused {what}: {Error(context, chap: null)}.");
        }
    }

    /// <summary>libiscsi's last error text, with the CHAP secret masked should it ever appear there.</summary>
    private static string Error(nint context, IscsiChap? chap)
    {
        string text = Marshal.PtrToStringUTF8(LibIscsi.iscsi_get_error(context)) ?? "";
        return chap != null && chap.Secret.Length > 0 ? text.Replace(chap.Secret, "***", StringComparison.Ordinal) : text;
    }
}
