namespace XenDisk.Xen;

/// <summary>
/// An event-channel handle (libxenevtchn: xenevtchn_handle). Semantics follow Linux's evtchn
/// device: when an event arrives on a bound port, the port is masked and queued as pending; it is
/// delivered once by <see cref="WaitPending"/>; no further event is delivered on that port until
/// <see cref="Unmask"/>. Events raised while a port is pending or masked coalesce into one.
/// Thread safety: <see cref="Notify"/> may be called from any thread; one thread waits.
/// </summary>
public interface IEventChannels : IDisposable
{
    /// <summary>xenevtchn_bind_interdomain: returns the local port. Throws <see cref="XenException"/> on failure.</summary>
    uint BindInterdomain(uint remoteDomainId, uint remotePort);

    /// <summary>xenevtchn_bind_unbound_port: allocates a port that <paramref name="remoteDomainId"/> may bind to
    /// (what a frontend does). Throws <see cref="XenException"/> on failure.</summary>
    uint BindUnboundPort(uint remoteDomainId);

    /// <summary>xenevtchn_unbind. Throws <see cref="XenException"/> on failure.</summary>
    void Unbind(uint localPort);

    /// <summary>xenevtchn_notify: kicks the remote end. Returns 0 or a negative errno.</summary>
    int Notify(uint localPort);

    /// <summary>
    /// Waits up to <paramref name="timeoutMilliseconds"/> (-1: forever) for a pending port
    /// (poll on xenevtchn_fd, then xenevtchn_pending). Returns the port, or -1 on time-out or
    /// after <see cref="Interrupt"/>.
    /// </summary>
    int WaitPending(int timeoutMilliseconds);

    /// <summary>
    /// xenevtchn_fd: a descriptor that polls readable while a port is pending, for a thread that waits
    /// on several sources in one call (the data plane waits on it and its storage completions through
    /// one io_uring). Owned by the handle; valid until <see cref="IDisposable.Dispose"/>.
    /// </summary>
    int FileDescriptor { get; }

    /// <summary>
    /// xenevtchn_pending without the wait: the next pending port, or -1 when none (or a negative errno).
    /// Call it only after <see cref="FileDescriptor"/> polled readable: on Linux's evtchn device the
    /// read blocks when nothing is pending. The port stays masked until <see cref="Unmask"/>.
    /// </summary>
    int TakePending();

    /// <summary>Wakes a thread blocked in <see cref="WaitPending"/> so that it can see a stop request.</summary>
    void Interrupt();

    /// <summary>xenevtchn_unmask: allows the next event on the port to be delivered. Returns 0 or a negative errno.</summary>
    int Unmask(uint localPort);
}
