namespace XenDisk.Storage;

/// <summary>
/// A device whose I/O an event loop drives itself, as QEMU drives libiscsi from its AioContext: the loop
/// opens a queue of its own, starts requests on it with <see cref="IPolledQueue.TrySubmit"/>, waits on
/// the queue's descriptors beside everything else it waits for, calls <see cref="IPolledQueue.Service"/>
/// when one fires, and gets each request's outcome back through <see cref="IPolledCompletion"/> on the
/// same thread: no hand-off to another thread and no blocking wait per request. Whatever a queue
/// declines (full, too large, an operation it does not offer) takes the blocking
/// <see cref="IBlockDevice"/> call instead, which stays the interface of tools and control work.
/// </summary>
public interface IPolledBlockDevice : IBlockDevice
{
    /// <summary>
    /// Opens a queue for one event loop (a network device logs in a connection of its own; this blocks
    /// for it). Throws <see cref="StorageException"/> when it cannot: the loop then uses the blocking
    /// calls. The queue must be disposed by the loop that drives it, before the device is.
    /// </summary>
    IPolledQueue OpenQueue(IPolledCompletion completion);
}

/// <summary>Where an <see cref="IPolledQueue"/> reports finished requests.</summary>
public interface IPolledCompletion
{
    /// <summary>
    /// The request started with <paramref name="tag"/> has finished. Called on the loop's thread from
    /// inside <see cref="IPolledQueue.TrySubmit"/>, <see cref="IPolledQueue.Service"/>,
    /// <see cref="IPolledQueue.PrepareToWait"/> or <see cref="IPolledQueue.CancelAll"/>: the callee
    /// records it and must not start requests on the queue from here.
    /// </summary>
    void Completed(int tag, IoStatus status);
}

/// <summary>The requests a polled queue may take.</summary>
public enum PolledOperation : byte
{
    Read,
    Write,
    /// <summary>Makes every write that completed before it durable; carries no data.</summary>
    Flush,
    /// <summary>Deallocates the range (never a secure discard).</summary>
    Discard,
}

/// <summary>
/// One event loop's queue on an <see cref="IPolledBlockDevice"/>. Single-threaded: only the loop that
/// drives it calls its members. Ownership: the buffers passed to <see cref="TrySubmit"/> are borrowed
/// until that request's completion is reported (the device moves data straight to and from them).
/// </summary>
public interface IPolledQueue : IDisposable
{
    /// <summary>The descriptor to wait on, or -1 while there is none (a reconnect waits); may change after any call.</summary>
    int FileDescriptor { get; }

    /// <summary>The poll(2) events to wait for on <see cref="FileDescriptor"/>; 0 while none.</summary>
    int Events { get; }

    /// <summary>
    /// Changes whenever the connection behind <see cref="FileDescriptor"/> may have been replaced, even
    /// under the same descriptor number (a reconnect closes one socket and may get its number again):
    /// a wait armed on the old one must then be replaced.
    /// </summary>
    int ConnectionGeneration { get; }

    /// <summary>Readable (POLLIN) when another thread handed the queue work; then call <see cref="Service"/> with woken.</summary>
    int WakeDescriptor { get; }

    /// <summary>How soon <see cref="Service"/> must run even without events (deadlines, retries, a deferred reconnect); <see cref="Timeout.Infinite"/> when nothing waits for time.</summary>
    int TimerMilliseconds { get; }

    /// <summary>
    /// Starts a request; false when the queue does not take it (full, out of range, larger than one
    /// command, not offered), and the caller then uses the blocking call, which gives the answer.
    /// </summary>
    bool TrySubmit(int tag, PolledOperation operation, long offset, long length, ReadOnlySpan<IoBuffer> buffers);

    /// <summary>Does the queue's work after <see cref="FileDescriptor"/> reported <paramref name="events"/> (0: none), the wake descriptor fired (<paramref name="woken"/>) or the timer ran out.</summary>
    void Service(int events, bool woken);

    /// <summary>Before the loop sleeps: hands what was started since the last call to the device (one batch of writes to a socket).</summary>
    void PrepareToWait();

    /// <summary>Ends every request in flight; each is reported (as an error) before this returns, and the device no longer touches its buffers.</summary>
    void CancelAll();
}
