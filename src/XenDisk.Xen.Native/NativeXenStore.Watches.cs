using System.Runtime.ExceptionServices;
using System.Threading.Channels;
using Tmds.Linux;
using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

/// <summary>
/// Watch delivery. libxenstore's own reader thread queues watch events on the connection and keeps
/// the pipe returned by xs_fileno readable while any are queued. One background thread polls that
/// pipe together with an eventfd used to stop it, drains the queue with the non-blocking
/// xs_check_watch until EAGAIN, and writes each event to a channel that
/// <see cref="ReadWatchAsync"/> reads.
/// The blocking xs_read_watch is not used: a thread blocked in it cannot be woken for shutdown, and
/// xs_close would free the condition variable it sleeps on.
/// </summary>
public sealed partial class NativeXenStore
{
    /// <summary>
    /// How often the watch thread looks at the connection when no event arrives. When the
    /// connection to xenstored breaks, libxenstore closes it without making the pipe readable; the
    /// next xs_check_watch then fails with EINVAL instead of EAGAIN, and readers see the failure
    /// within this interval instead of waiting forever.
    /// </summary>
    private const int ConnectionCheckIntervalMilliseconds = 1000;

    private readonly Channel<XenStoreWatchEvent> _watchEvents = Channel.CreateUnbounded<XenStoreWatchEvent>(
        new UnboundedChannelOptions { SingleWriter = true, SingleReader = false });

    private readonly SafeEventFdHandle _watchEventFd;
    private Thread? _watchThread;
    private int _watchFd;

    public ValueTask<XenStoreWatchEvent> ReadWatchAsync(CancellationToken cancellationToken)
    {
        if (_watchEvents.Reader.TryRead(out XenStoreWatchEvent watchEvent))
        {
            return new ValueTask<XenStoreWatchEvent>(watchEvent);
        }

        return ReadWatchSlowAsync(cancellationToken);
    }

    private async ValueTask<XenStoreWatchEvent> ReadWatchSlowAsync(CancellationToken cancellationToken)
    {
        try
        {
            return await _watchEvents.Reader.ReadAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (ChannelClosedException closed) when (closed.InnerException is not null)
        {
            // Surface why the channel closed (a lost connection, or Dispose) rather than the channel's wrapper.
            ExceptionDispatchInfo.Throw(closed.InnerException);
            throw;
        }
    }

    private void StartWatchThread()
    {
        // Created before the first xs_watch, so that libxenstore keeps the pipe in step with its
        // queue from the start.
        _watchFd = Interop.XenStore.xs_fileno(_handle.DangerousGetHandle());
        if (_watchFd < 0)
        {
            NativeErrno.ThrowXenException("xs_fileno");
        }

        _watchThread = new Thread(RunWatchThread) { IsBackground = true, Name = "xenstore watches" };
        _watchThread.Start();
    }

    private void StopWatchThread()
    {
        _watchEventFd.Signal();
        if (_watchThread is not null && _watchThread != Thread.CurrentThread)
        {
            _watchThread.Join();
        }

        _watchEvents.Writer.TryComplete(new ObjectDisposedException(nameof(NativeXenStore)));
    }

    private unsafe void RunWatchThread()
    {
        // Held for the thread's lifetime: xs_close must not run while this thread is inside libxenstore.
        if (!SafeHandleReferences.TryAddRef(_handle))
        {
            return;
        }

        try
        {
            Exception? failure = PumpWatchEvents();
            if (failure is not null)
            {
                _watchEvents.Writer.TryComplete(failure);
            }
        }
        finally
        {
            _handle.DangerousRelease();
        }
    }

    /// <summary>Runs until stopped (returns null) or until the connection fails (returns the failure).</summary>
    private unsafe Exception? PumpWatchEvents()
    {
        nint xs = _handle.DangerousGetHandle();
        pollfd* fds = stackalloc pollfd[2];
        while (true)
        {
            fds[0] = new pollfd { fd = _watchFd, events = LibC.POLLIN };
            fds[1] = new pollfd { fd = _watchEventFd.FileDescriptor, events = LibC.POLLIN };
            int ready = LibC.poll(fds, 2u, ConnectionCheckIntervalMilliseconds);
            if (ready < 0)
            {
                int errno = NativeErrno.Last();
                if (errno == LibC.EINTR)
                {
                    continue;
                }

                return new XenException("poll", errno, "xenstore watch pipe");
            }

            if (fds[1].revents != 0)
            {
                return null;
            }

            // Drain on a readable pipe and on every time-out alike: the latter is the connection check.
            while (true)
            {
                byte** strings = Interop.XenStore.xs_check_watch(xs);
                if (strings == null)
                {
                    int errno = NativeErrno.Last();
                    if (errno == LibC.EAGAIN)
                    {
                        break;
                    }

                    return new XenStoreException("xs_check_watch", "(connection to xenstored lost)", errno);
                }

                XenStoreWatchEvent watchEvent;
                try
                {
                    watchEvent = new XenStoreWatchEvent(
                        Utf8String(strings[Interop.XenStore.XS_WATCH_PATH]),
                        Utf8String(strings[Interop.XenStore.XS_WATCH_TOKEN]));
                }
                finally
                {
                    NativeMemory.Free(strings);
                }

                _watchEvents.Writer.TryWrite(watchEvent);
            }
        }
    }
}
