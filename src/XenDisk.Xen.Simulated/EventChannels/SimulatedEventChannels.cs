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
/// one short lock each; the waiter sleeps in Monitor.Wait.
/// <para>
/// Like the evtchn device, the handle has a descriptor (<see cref="FileDescriptor"/>, an eventfd)
/// that polls readable exactly while a port is queued, so that the data plane waits on it through
/// io_uring or poll(2) here as it does on real Xen. The eventfd's counter is set when the queue
/// becomes non-empty and cleared when it empties, both under the handle's lock.
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
    }

    public int FileDescriptor => _readyFd;

    public int TakePending()
    {
        lock (_sync)
        {
            return DequeueLocked();
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

    public int WaitPending(int timeoutMilliseconds)
    {
        long deadline = timeoutMilliseconds < 0 ? long.MaxValue : Environment.TickCount64 + timeoutMilliseconds;
        lock (_sync)
        {
            while (true)
            {
                if (_interruptRequested)
                {
                    _interruptRequested = false;
                    return -1;
                }

                int pending = DequeueLocked();
                if (pending >= 0)
                {
                    return pending;
                }

                if (_disposed)
                {
                    return -1;
                }

                int wait;
                if (timeoutMilliseconds < 0)
                {
                    wait = Timeout.Infinite;
                }
                else
                {
                    long remaining = deadline - Environment.TickCount64;
                    if (remaining <= 0)
                    {
                        return -1;
                    }

                    wait = (int)remaining;
                }

                _blockedWaiters++;
                try
                {
                    Monitor.Wait(_sync, wait);
                }
                finally
                {
                    _blockedWaiters--;
                }
            }
        }
    }

    /// <summary>
    /// Threads asleep in <see cref="WaitPending"/> right now. Counted under the lock just before
    /// Monitor.Wait releases it, so once a test sees it rise, a Notify or Interrupt it sends wakes a
    /// sleeper rather than reaching a waiter that has yet to look.
    /// </summary>
    public int BlockedWaiters => Volatile.Read(ref _blockedWaiters);

    /// <summary>Sticky: a WaitPending that starts after the interrupt returns -1 at once, so a stop request cannot be missed.</summary>
    public void Interrupt()
    {
        lock (_sync)
        {
            _interruptRequested = true;
            Monitor.PulseAll(_sync);
        }
    }

    public int Unmask(uint localPort)
    {
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
                DeliverLocked(port);
            }

            return 0;
        }
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
            Monitor.PulseAll(_sync);
        }

        _hypervisor.EventSwitch.UnbindAll(this, _domain);
        Tmds.Linux.LibC.close(_readyFd);
    }

    /// <summary>An event arrives on <paramref name="port"/>, one of this handle's ports.</summary>
    internal void Raise(EventPort port)
    {
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

            DeliverLocked(port);
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

    private void DeliverLocked(EventPort port)
    {
        port.Masked = true;
        if (_queueCount == _queue.Length)
        {
            GrowQueue();
        }

        _queue[(_queueHead + _queueCount) % _queue.Length] = port;
        _queueCount++;
        if (_queueCount == 1)
        {
            SetReady(true);
        }

        _deliveries++;
        _domain.CountNotificationDelivered();
        Monitor.Pulse(_sync);
    }

    /// <summary>The next queued port still owned by this handle, or -1; clears the descriptor's readiness when the queue empties.</summary>
    private int DequeueLocked()
    {
        int result = -1;
        bool dequeued = _queueCount > 0;
        while (_queueCount > 0)
        {
            EventPort port = _queue[_queueHead];
            _queue[_queueHead] = null!;
            _queueHead = (_queueHead + 1) % _queue.Length;
            _queueCount--;
            if (port.Owner == this)
            {
                result = (int)port.Number;
                break;
            }
        }

        if (dequeued && _queueCount == 0)
        {
            SetReady(false);
        }

        return result;
    }

    /// <summary>Readable while the queue holds a port: a write sets the counter, a read (non-blocking) clears it.</summary>
    private void SetReady(bool ready)
    {
        if (_disposed)
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
