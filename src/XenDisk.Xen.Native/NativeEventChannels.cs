using Tmds.Linux;

namespace XenDisk.Xen.Native;

/// <summary>
/// <see cref="IEventChannels"/> over libxenevtchn (Linux: /dev/xen/evtchn).
/// The Linux evtchn device masks a port when it queues it for xenevtchn_pending, and Xen sets the
/// port's pending bit for every further event while masked; xenevtchn_unmask re-arms it and, if an
/// event arrived meanwhile, delivers it at once. That is exactly the seam's "masked until Unmask,
/// coalesced while pending" contract, so no bookkeeping is needed here. The device queues at most
/// one entry per port (the port is masked while queued), which keeps its 1024-entry queue from
/// overflowing as long as fewer ports than that are bound through one handle.
/// Threads: <see cref="Notify"/>, <see cref="Unmask"/> and <see cref="Interrupt"/> from anywhere;
/// exactly one thread in <see cref="WaitPending"/>, because a second reader could take the port the
/// first was woken for and leave it blocked in read(2).
/// </summary>
public sealed class NativeEventChannels : IEventChannels
{
    private readonly SafeXenEvtchnHandle _handle;
    private readonly SafeEventFdHandle _wake;
    private readonly int _evtchnFd;

    private NativeEventChannels(SafeXenEvtchnHandle handle, SafeEventFdHandle wake)
    {
        _handle = handle;
        _wake = wake;
        _evtchnFd = Interop.XenEvtchn.xenevtchn_fd(handle);
        MakeNonBlocking(_evtchnFd);
    }

    /// <summary>
    /// O_NONBLOCK on the evtchn descriptor. The ring thread reads pending ports and writes unmasks
    /// through its io_uring; the evtchn device has plain read/write methods and no FMODE_NOWAIT, so
    /// io_uring hands every such read and write of a blocking descriptor to one of its worker threads
    /// (io_uring.c, __io_file_supports_nowait: "any ->read/write should understand O_NONBLOCK"): two
    /// extra thread wake-ups per guest kick and per unmask, each a trip through the hypervisor in a PV
    /// dom0. Non-blocking, the read is tried in place, parked on the device's poll while nothing is
    /// pending, and completes in the ring thread's own wait; the unmask completes at once. Every other
    /// read of the descriptor (<see cref="WaitPending"/>, <see cref="TakePending"/>) comes after a poll
    /// said it is readable, so no caller depends on a blocking read.
    /// </summary>
    private static void MakeNonBlocking(int fd)
    {
        int flags = LibC.fcntl(fd, LibC.F_GETFL, 0);
        if (flags >= 0 && (flags & LibC.O_NONBLOCK) == 0)
        {
            _ = LibC.fcntl(fd, LibC.F_SETFL, flags | LibC.O_NONBLOCK);
        }
    }

    /// <summary>xenevtchn_open. Throws <see cref="XenException"/> naming xenevtchn_open when the evtchn device cannot be opened.</summary>
    public static NativeEventChannels Open()
    {
        SafeXenEvtchnHandle handle = Interop.XenEvtchn.xenevtchn_open(0, 0);
        if (handle.IsInvalid)
        {
            int errno = NativeErrno.Last();
            handle.Dispose();
            throw new XenException("xenevtchn_open", errno, "cannot open /dev/xen/evtchn");
        }

        try
        {
            return new NativeEventChannels(handle, SafeEventFdHandle.Create());
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    public uint BindInterdomain(uint remoteDomainId, uint remotePort)
    {
        int port = Interop.XenEvtchn.xenevtchn_bind_interdomain(_handle, remoteDomainId, remotePort);
        if (port < 0)
        {
            NativeErrno.ThrowXenException("xenevtchn_bind_interdomain", $"domain {remoteDomainId} port {remotePort}");
        }

        return (uint)port;
    }

    public uint BindUnboundPort(uint remoteDomainId)
    {
        int port = Interop.XenEvtchn.xenevtchn_bind_unbound_port(_handle, remoteDomainId);
        if (port < 0)
        {
            NativeErrno.ThrowXenException("xenevtchn_bind_unbound_port", $"domain {remoteDomainId}");
        }

        return (uint)port;
    }

    public void Unbind(uint localPort)
    {
        if (Interop.XenEvtchn.xenevtchn_unbind(_handle, localPort) != 0)
        {
            NativeErrno.ThrowXenException("xenevtchn_unbind", $"port {localPort}");
        }
    }

    public int Notify(uint localPort)
    {
        if (!SafeHandleReferences.TryAddRef(_handle))
        {
            return -LibC.EBADF;
        }

        try
        {
            return Interop.XenEvtchn.xenevtchn_notify(_handle.DangerousGetHandle(), localPort) == 0 ? 0 : -NativeErrno.Last();
        }
        finally
        {
            _handle.DangerousRelease();
        }
    }

    public int Unmask(uint localPort)
    {
        if (!SafeHandleReferences.TryAddRef(_handle))
        {
            return -LibC.EBADF;
        }

        try
        {
            return Interop.XenEvtchn.xenevtchn_unmask(_handle.DangerousGetHandle(), localPort) == 0 ? 0 : -NativeErrno.Last();
        }
        finally
        {
            _handle.DangerousRelease();
        }
    }

    /// <summary>
    /// Polls the evtchn fd and the wake eventfd. Returns the pending port; -1 on time-out, after
    /// <see cref="Interrupt"/> or after <see cref="Dispose"/>; or another negative errno when poll
    /// or xenevtchn_pending failed (the handle is then unusable: treat any negative as "no port").
    /// </summary>
    public unsafe int WaitPending(int timeoutMilliseconds)
    {
        // Both references keep the fds open while this thread polls them, so a concurrent Dispose
        // cannot close (and let the kernel reuse) a descriptor under poll(2).
        if (!SafeHandleReferences.TryAddRef(_handle))
        {
            return -1;
        }

        if (!SafeHandleReferences.TryAddRef(_wake))
        {
            _handle.DangerousRelease();
            return -1;
        }

        try
        {
            return WaitPendingCore(timeoutMilliseconds);
        }
        finally
        {
            _wake.DangerousRelease();
            _handle.DangerousRelease();
        }
    }

    private unsafe int WaitPendingCore(int timeoutMilliseconds)
    {
        pollfd* fds = stackalloc pollfd[2];
        long deadline = timeoutMilliseconds < 0 ? long.MaxValue : Environment.TickCount64 + timeoutMilliseconds;
        int timeout = timeoutMilliseconds;
        while (true)
        {
            fds[0] = new pollfd { fd = _evtchnFd, events = LibC.POLLIN };
            fds[1] = new pollfd { fd = _wake.FileDescriptor, events = LibC.POLLIN };
            int ready = LibC.poll(fds, 2u, timeout);
            if (ready < 0)
            {
                int errno = NativeErrno.Last();
                if (errno != LibC.EINTR)
                {
                    return -errno;
                }
            }
            else if (ready == 0)
            {
                return -1;
            }
            else if (fds[0].revents != 0)
            {
                // A port first even when an Interrupt is also pending: the eventfd stays readable,
                // so the stop request is seen on the next call rather than lost.
                // POLLERR alone means the device's queue overflowed; read(2) then fails with EFBIG
                // at once instead of blocking, so xenevtchn_pending is safe to call either way.
                int port = Interop.XenEvtchn.xenevtchn_pending(_handle.DangerousGetHandle());
                return port >= 0 ? port : -NativeErrno.Last();
            }
            else
            {
                _wake.Drain();
                return -1;
            }

            if (timeoutMilliseconds >= 0)
            {
                long remaining = deadline - Environment.TickCount64;
                if (remaining <= 0)
                {
                    return -1;
                }

                timeout = (int)remaining;
            }
        }
    }

    public int FileDescriptor => _evtchnFd;

    public int TakePending()
    {
        int port = Interop.XenEvtchn.xenevtchn_pending(_handle.DangerousGetHandle());
        return port >= 0 ? port : -NativeErrno.Last();
    }

    /// <summary>The evtchn device's read returns pending ports as evtchn_port_t (uint32), as many as fit.</summary>
    public int PendingReadSize => sizeof(uint);

    public int PendingFromRead(ReadOnlySpan<byte> data) =>
        data.Length >= sizeof(uint) ? (int)System.Runtime.InteropServices.MemoryMarshal.Read<uint>(data) : -1;

    /// <summary>The evtchn device's write unmasks each evtchn_port_t written (what xenevtchn_unmask does).</summary>
    public bool TryFormatUnmask(uint localPort, Span<byte> destination, out int length)
    {
        length = sizeof(uint);
        return System.Runtime.InteropServices.MemoryMarshal.TryWrite(destination, in localPort);
    }

    public void Interrupt() => _wake.Signal();

    public void Dispose()
    {
        // Wake a waiter first; the references it holds defer the real close until it has returned.
        Interrupt();
        _handle.Dispose();
        _wake.Dispose();
    }
}
