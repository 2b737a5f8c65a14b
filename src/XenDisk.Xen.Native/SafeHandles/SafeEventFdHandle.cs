using Microsoft.Win32.SafeHandles;
using Tmds.Linux;

namespace XenDisk.Xen.Native;

/// <summary>
/// Owns a non-blocking eventfd(2) used to wake a thread blocked in poll(2): a write makes it
/// readable until a read drains the counter, so a wake-up sent before the sleeper reaches poll is
/// not lost.
/// </summary>
internal sealed class SafeEventFdHandle : SafeHandleMinusOneIsInvalid
{
    public SafeEventFdHandle()
        : base(ownsHandle: true)
    {
    }

    internal int FileDescriptor => (int)handle;

    /// <summary>Creates the eventfd; throws <see cref="XenException"/> naming eventfd on failure.</summary>
    internal static SafeEventFdHandle Create()
    {
        int fd = LibC.eventfd(0, LibC.EFD_CLOEXEC | LibC.EFD_NONBLOCK);
        if (fd < 0)
        {
            throw new XenException("eventfd", NativeErrno.Last());
        }

        var result = new SafeEventFdHandle();
        result.SetHandle(fd);
        return result;
    }

    /// <summary>
    /// Makes the eventfd readable; does nothing once the handle is closed, so a late signal can
    /// never write into a descriptor number the process has reused. Allocation-free.
    /// </summary>
    internal unsafe void Signal()
    {
        if (!SafeHandleReferences.TryAddRef(this))
        {
            return;
        }

        try
        {
            ulong one = 1;
            // EAGAIN means the counter is saturated: it is readable already, which is all a signal needs.
            _ = LibC.write(FileDescriptor, &one, sizeof(ulong));
        }
        finally
        {
            DangerousRelease();
        }
    }

    /// <summary>Resets the counter so that the eventfd is no longer readable. The caller holds a reference on the handle.</summary>
    internal unsafe void Drain()
    {
        ulong value;
        _ = LibC.read(FileDescriptor, &value, sizeof(ulong));
    }

    protected override bool ReleaseHandle() => LibC.close((int)handle) == 0;
}
