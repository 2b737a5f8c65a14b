using XenDisk.Xen.Simulated.EventChannels;
using Tmds.Linux;

namespace XenDisk.Xen.Simulated;

/// <summary>
/// An event-channel handle of one domain, with the semantics of Linux's /dev/xen/evtchn: an event
/// on an unmasked port masks it and queues it for <see cref="WaitPending"/> (one delivery); an
/// event on a masked port only sets its pending bit; <see cref="Unmask"/> delivers a pending port
/// again. So a burst of notifies coalesces into one delivery, and a notify that races with the
/// consumer is never lost: it is redelivered on unmask.
/// Hot path (<see cref="Notify"/>, <see cref="WaitPending"/>, <see cref="Unmask"/>): no allocation,
/// one short lock each; the waiter sleeps in poll(2) on the descriptor, as on the evtchn device.
/// <para>
/// Like the evtchn device, the handle has a descriptor (<see cref="FileDescriptor"/>, an eventfd)
/// that polls readable exactly while a port is queued, so that the data plane waits on it through
/// io_uring or poll(2) here as it does on real Xen. The eventfd's counter is set when the queue
/// becomes non-empty (by the notifier, just after it leaves the lock) and cleared under the lock when
/// it empties; a reader woken by a write that landed after its port was taken finds nothing queued and
/// clears the counter again (a spurious wake-up, never a lost one). A reader that reads
/// the eventfd itself (through io_uring) clears it and then takes the port with
/// <see cref="PendingFromRead"/>. Until the descriptor is first used (asked for, or waited on) the
/// eventfd is not kept in step, so a handle that only notifies costs no system call to deliver to.
/// </para>
/// </summary>
public sealed unsafe class SimulatedEventChannels : IEventChannels
{
    private readonly SimulatedHypervisor _hypervisor;
    private readonly SimulatedDomain _domain;
    private readonly object _sync = new();
    private readonly Dictionary<uint, EventPort> _ports = [];
    private EventPort[] _queue = new EventPort[16];
    private int _queueHead;
    private int _queueCount;
    private bool _interruptRequested;
    private bool _disposed;
    private long _deliveries;

    private readonly int _readyFd;
    private readonly int _interruptFd;
    private bool _descriptorInUse;
    // Pollers in WaitPending and notifiers writing the eventfd outside the lock; the last one out after
    // Dispose closes the descriptors, so no write or poll can reach a descriptor number reused since.
    private int _descriptorUsers;
    private bool _closed;
    private int _blockedWaiters;

    internal SimulatedEventChannels(SimulatedHypervisor hypervisor, SimulatedDomain domain)
    {
        _hypervisor = hypervisor;
        _domain = domain;
        _readyFd = Tmds.Linux.LibC.eventfd(0, Tmds.Linux.LibC.EFD_NONBLOCK | Tmds.Linux.LibC.EFD_CLOEXEC);
        if (_readyFd < 0)
        {
            throw new XenException("eventfd", Tmds.Linux.LibC.errno, "cannot create the simulated evtchn descriptor");
        }

        _interruptFd = Tmds.Linux.LibC.eventfd(0, Tmds.Linux.LibC.EFD_NONBLOCK | Tmds.Linux.LibC.EFD_CLOEXEC);
        if (_interruptFd < 0)
        {
            int errno = Tmds.Linux.LibC.errno;
            Tmds.Linux.LibC.close(_readyFd);
            throw new XenException("eventfd", errno, "cannot create the simulated evtchn interrupt descriptor");
        }
    }

    public int FileDescriptor
    {
        get
        {
            lock (_sync)
            {
                UseDescriptorLocked();
            }

            return _readyFd;
        }
    }

    public int TakePending()
    {
        lock (_sync)
        {
            return DequeueLocked();
        }
    }

    /// <summary>A read of the eventfd returns its 8-byte counter.</summary>
    public int PendingReadSize => sizeof(ulong);

    /// <summary>
    /// The caller's read of the eventfd cleared its counter: take the next port, and set the counter
    /// again when more remain queued (a port queued while the queue was non-empty wrote nothing).
    /// </summary>
    public int PendingFromRead(ReadOnlySpan<byte> data)
    {
        lock (_sync)
        {
            int result = TakeQueuedLocked();
            if (_queueCount > 0)
            {
                SetReady(true);
            }

            return result;
        }
    }

    /// <summary>Events delivered through this handle (a coalesced burst counts once).</summary>
    public long Deliveries => Interlocked.Read(ref _deliveries);

    public uint DomainId => _domain.Id;

    public uint BindUnboundPort(uint remoteDomainId)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed), this);
        return _hypervisor.EventSwitch.BindUnbound(this, _domain, remoteDomainId);
    }

    public uint BindInterdomain(uint remoteDomainId, uint remotePort)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed), this);
        EventPort local = _hypervisor.EventSwitch.BindInterdomain(this, _domain, remoteDomainId, remotePort);

        // Xen marks the new local port pending (evtchn_bind_interdomain) because notifications sent
        // to the unbound remote port before the bind were lost: the backend looks at the ring once.
        Raise(local);
        return local.Number;
    }

    public void Unbind(uint localPort) => _hypervisor.EventSwitch.Unbind(this, _domain, localPort);

    public int Notify(uint localPort)
    {
        EventPort? peer;
        lock (_sync)
        {
            if (!_ports.TryGetValue(localPort, out EventPort? port))
            {
                return -LibC.EINVAL;
            }

            if (port.State != EventPortState.Interdomain || port.Peer is null)
            {
                return -LibC.ENOTCONN; // the remote end has closed
            }

            peer = port.Peer;
        }

        peer.Owner?.Raise(peer);
        return 0;
    }

    /// <summary>
    /// Sleeps in poll(2) on the descriptor (and on the interrupt's eventfd), as a reader of the evtchn
    /// device sleeps in the kernel, and takes the port under the lock. So a notify costs the notifier
    /// one eventfd write, as xenevtchn_notify costs one ioctl, and no monitor hand-off.
    /// </summary>
    public int WaitPending(int timeoutMilliseconds)
    {
        long deadline = timeoutMilliseconds < 0 ? long.MaxValue : Environment.TickCount64 + timeoutMilliseconds;
        Tmds.Linux.pollfd* fds = stackalloc Tmds.Linux.pollfd[2];
        bool woken = false;
        while (true)
        {
            lock (_sync)
            {
                if (_interruptRequested)
                {
                    _interruptRequested = false;
                    ulong value;
                    Tmds.Linux.LibC.read(_interruptFd, &value, sizeof(ulong));
                    return -1;
                }

                UseDescriptorLocked();
                int pending = DequeueLocked();
                if (pending >= 0)
                {
                    return pending;
                }

                if (_disposed)
                {
                    return -1;
                }

                if (woken)
                {
                    // Readable with nothing queued: a notifier's write landed after its port was taken.
                    ulong stale;
                    Tmds.Linux.LibC.read(_readyFd, &stale, sizeof(ulong));
                }

                _descriptorUsers++;
                _blockedWaiters++;
            }

            int wait = Timeout.Infinite;
            if (timeoutMilliseconds >= 0)
            {
                wait = (int)Math.Max(0, deadline - Environment.TickCount64);
            }

            fds[0] = new Tmds.Linux.pollfd { fd = _readyFd, events = Tmds.Linux.LibC.POLLIN };
            fds[1] = new Tmds.Linux.pollfd { fd = _interruptFd, events = Tmds.Linux.LibC.POLLIN };
            int ready = Tmds.Linux.LibC.poll(fds, 2, wait);
            woken = ready > 0 && fds[0].revents != 0;
            lock (_sync)
            {
                _blockedWaiters--;
                // The descriptors outlive Dispose while a waiter polls them; the last waiter closes them.
                if (--_descriptorUsers == 0 && _disposed)
                {
                    CloseDescriptorsLocked();
                }
            }

            if (ready == 0 && timeoutMilliseconds >= 0 && Environment.TickCount64 >= deadline)
            {
                return -1;
            }
        }
    }

    /// <summary>
    /// Threads in <see cref="WaitPending"/>'s poll right now. Counted under the lock before the poll, so
    /// once a test sees it rise, a Notify or Interrupt it sends must wake that waiter through its
    /// eventfd (which stays readable until taken) rather than reach a waiter that has yet to look.
    /// </summary>
    public int BlockedWaiters => Volatile.Read(ref _blockedWaiters);

    /// <summary>Sticky: a WaitPending that starts after the interrupt returns -1 at once, so a stop request cannot be missed.</summary>
    public void Interrupt()
    {
        lock (_sync)
        {
            _interruptRequested = true;
            if (!_closed)
            {
                ulong one = 1;
                Tmds.Linux.LibC.write(_interruptFd, &one, sizeof(ulong));
            }
        }
    }

    public int Unmask(uint localPort)
    {
        bool signal = false;
        lock (_sync)
        {
            if (!_ports.TryGetValue(localPort, out EventPort? port))
            {
                return -LibC.EINVAL;
            }

            port.Masked = false;
            if (port.Pending)
            {
                port.Pending = false;
                signal = DeliverLocked(port);
            }
        }

        if (signal)
        {
            SignalReady();
        }

        return 0;
    }

    public void Dispose()
    {
        lock (_sync)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            ulong one = 1;
            Tmds.Linux.LibC.write(_interruptFd, &one, sizeof(ulong));
            if (_descriptorUsers == 0)
            {
                CloseDescriptorsLocked();
            }
        }

        _hypervisor.EventSwitch.UnbindAll(this, _domain);
    }

    private void CloseDescriptorsLocked()
    {
        if (!_closed)
        {
            _closed = true;
            Tmds.Linux.LibC.close(_readyFd);
            Tmds.Linux.LibC.close(_interruptFd);
        }
    }

    /// <summary>From the first use of the descriptor on, its eventfd follows the queue.</summary>
    private void UseDescriptorLocked()
    {
        if (!_descriptorInUse)
        {
            _descriptorInUse = true;
            if (_queueCount > 0)
            {
                SetReady(true);
            }
        }
    }

    /// <summary>An event arrives on <paramref name="port"/>, one of this handle's ports.</summary>
    internal void Raise(EventPort port)
    {
        bool signal;
        lock (_sync)
        {
            if (port.Owner != this || _disposed)
            {
                return;
            }

            if (port.Masked)
            {
                port.Pending = true;
                return;
            }

            signal = DeliverLocked(port);
        }

        if (signal)
        {
            SignalReady();
        }
    }

    /// <summary>
    /// Makes the descriptor readable for a port just queued: outside the lock, so that the woken
    /// reader does not find the lock still held by the notifier's system call.
    /// </summary>
    private void SignalReady()
    {
        ulong one = 1;
        Tmds.Linux.LibC.write(_readyFd, &one, sizeof(ulong));
        lock (_sync)
        {
            if (--_descriptorUsers == 0 && _disposed)
            {
                CloseDescriptorsLocked();
            }
        }
    }

    internal void AttachPort(EventPort port)
    {
        lock (_sync)
        {
            _ports[port.Number] = port;
        }
    }

    internal void DetachPort(EventPort port)
    {
        lock (_sync)
        {
            _ports.Remove(port.Number);
            port.Owner = null;
            port.Pending = false;
            port.Masked = false;
        }
    }

    /// <summary>The remote end closed: the port reverts to unbound-for-that-domain (evtchn_close).</summary>
    internal void RemoteClosed(EventPort port, uint closingDomainId)
    {
        lock (_sync)
        {
            port.State = EventPortState.Unbound;
            port.RemoteDomainId = closingDomainId;
            port.Peer = null;
        }
    }

    internal void Connect(EventPort port, EventPort peer)
    {
        lock (_sync)
        {
            port.State = EventPortState.Interdomain;
            port.Peer = peer;
            port.RemoteDomainId = peer.Domain.Id;
        }
    }

    internal EventPort[] SnapshotPorts()
    {
        lock (_sync)
        {
            return [.. _ports.Values];
        }
    }

    /// <summary>Queues <paramref name="port"/> (masked until unmasked). True when the caller must make the
    /// descriptor readable (<see cref="SignalReady"/>) once it has left the lock.</summary>
    private bool DeliverLocked(EventPort port)
    {
        port.Masked = true;
        if (_queueCount == _queue.Length)
        {
            GrowQueue();
        }

        _queue[(_queueHead + _queueCount) % _queue.Length] = port;
        _queueCount++;
        _deliveries++;
        _domain.CountNotificationDelivered();
        if (_queueCount == 1 && _descriptorInUse && !_closed)
        {
            _descriptorUsers++;
            return true;
        }

        return false;
    }

    /// <summary>The next queued port still owned by this handle, or -1; clears the descriptor's readiness when the queue empties.</summary>
    private int DequeueLocked()
    {
        bool dequeued = _queueCount > 0;
        int result = TakeQueuedLocked();
        if (dequeued && _queueCount == 0)
        {
            SetReady(false);
        }

        return result;
    }

    /// <summary>The next queued port still owned by this handle, or -1; leaves the descriptor alone.</summary>
    private int TakeQueuedLocked()
    {
        while (_queueCount > 0)
        {
            EventPort port = _queue[_queueHead];
            _queue[_queueHead] = null!;
            _queueHead = (_queueHead + 1) % _queue.Length;
            _queueCount--;
            if (port.Owner == this)
            {
                return (int)port.Number;
            }
        }

        return -1;
    }

    /// <summary>Readable while the queue holds a port: a write sets the counter, a read (non-blocking) clears it.</summary>
    private void SetReady(bool ready)
    {
        if (_closed || !_descriptorInUse)
        {
            return;
        }

        ulong value = 1;
        if (ready)
        {
            Tmds.Linux.LibC.write(_readyFd, &value, sizeof(ulong));
        }
        else
        {
            Tmds.Linux.LibC.read(_readyFd, &value, sizeof(ulong));
        }
    }

    private void GrowQueue()
    {
        var larger = new EventPort[_queue.Length * 2];
        for (int i = 0; i < _queueCount; i++)
        {
            larger[i] = _queue[(_queueHead + i) % _queue.Length];
        }

        _queue = larger;
        _queueHead = 0;
    }
}
