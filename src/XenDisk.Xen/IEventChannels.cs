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

    /// <summary>
    /// Bytes one read of <see cref="FileDescriptor"/> takes to deliver one pending port, for a thread that
    /// reads the descriptor through its own io_uring instead of polling it and calling
    /// <see cref="TakePending"/> (two system calls fewer per wake-up): Linux's evtchn device returns the
    /// pending ports as evtchn_port_t, 4 bytes each. 0 when the descriptor can only be polled.
    /// </summary>
    int PendingReadSize => 0;

    /// <summary>
    /// A read of <see cref="FileDescriptor"/> of <see cref="PendingReadSize"/> bytes completed with
    /// <paramref name="data"/>: the pending port it delivered, or -1. Like <see cref="TakePending"/>, the
    /// port stays masked until it is unmasked.
    /// </summary>
    int PendingFromRead(ReadOnlySpan<byte> data) => -1;

    /// <summary>
    /// Linux's evtchn device unmasks the ports written to its descriptor (an array of evtchn_port_t), so
    /// the unmask can be queued as a write on the caller's io_uring instead of a system call of its own.
    /// True with the bytes to write to <see cref="FileDescriptor"/>; false when the descriptor takes no
    /// writes: call <see cref="Unmask"/>.
    /// </summary>
    bool TryFormatUnmask(uint localPort, Span<byte> destination, out int length)
    {
        length = 0;
        return false;
    }

    /// <summary>Wakes a thread blocked in <see cref="WaitPending"/> so that it can see a stop request.</summary>
    void Interrupt();

    /// <summary>xenevtchn_unmask: allows the next event on the port to be delivered. Returns 0 or a negative errno.</summary>
    int Unmask(uint localPort);
}
