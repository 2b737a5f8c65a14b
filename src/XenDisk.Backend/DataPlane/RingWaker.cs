using static Tmds.Linux.LibC;

namespace XenDisk.Backend.DataPlane;

/// <summary>
/// The ring thread's own wake-up: an eventfd that the ring waits on beside the event channel, so that
/// a stop request or a slow-path completion (from an I/O thread) ends the ring thread's sleep. Sticky:
/// a signal raised while the thread is busy keeps the descriptor readable until <see cref="Drain"/>.
/// Ownership: the ring creates it and disposes it after its thread has exited.
/// </summary>
internal sealed unsafe class RingWaker : IDisposable
{
    private int _fd;

    public RingWaker()
    {
        _fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (_fd < 0)
        {
            throw new InvalidOperationException($"Cannot create the ring's wake-up eventfd (errno {errno}).");
        }
    }

    public int FileDescriptor => _fd;

    /// <summary>Any thread. One write(2); concurrent signals coalesce in the counter.</summary>
    public void Signal()
    {
        ulong one = 1;
        int fd = Volatile.Read(ref _fd);
        if (fd >= 0)
        {
            write(fd, &one, sizeof(ulong));
        }
    }

    /// <summary>Ring thread, after the descriptor polled readable: resets the counter (non-blocking read).</summary>
    public void Drain()
    {
        ulong value;
        read(_fd, &value, sizeof(ulong));
    }

    public void Dispose()
    {
        int fd = Interlocked.Exchange(ref _fd, -1);
        if (fd >= 0)
        {
            close(fd);
        }
    }
}
