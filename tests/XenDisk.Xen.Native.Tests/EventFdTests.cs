using Tmds.Linux;

namespace XenDisk.Xen.Native.Tests;

/// <summary>The eventfd behind <see cref="NativeEventChannels.Interrupt"/> and the xenstore watch thread's stop signal.</summary>
public sealed class EventFdTests
{
    [Fact]
    public unsafe void Signal_makes_it_readable_until_drained_even_when_sent_before_the_wait()
    {
        using SafeEventFdHandle wake = SafeEventFdHandle.Create();

        Assert.False(IsReadable(wake));
        wake.Signal();
        wake.Signal();
        Assert.True(IsReadable(wake));
        wake.Drain();
        Assert.False(IsReadable(wake));
    }

    [Fact]
    public void Signal_after_dispose_is_ignored()
    {
        SafeEventFdHandle wake = SafeEventFdHandle.Create();
        wake.Dispose();

        wake.Signal();

        Assert.True(wake.IsClosed);
    }

    [Fact]
    public void Errno_zero_after_a_failed_call_is_reported_as_EIO_not_success()
    {
        System.Runtime.InteropServices.Marshal.SetLastPInvokeError(0);
        Assert.Equal(LibC.EIO, NativeErrno.Last());

        System.Runtime.InteropServices.Marshal.SetLastPInvokeError(LibC.EAGAIN);
        Assert.Equal(LibC.EAGAIN, NativeErrno.Last());
    }

    private static unsafe bool IsReadable(SafeEventFdHandle handle)
    {
        var fd = new pollfd { fd = handle.FileDescriptor, events = LibC.POLLIN };
        int ready = LibC.poll(&fd, 1u, 0);
        Assert.True(ready >= 0);
        return ready == 1 && (fd.revents & LibC.POLLIN) != 0;
    }
}
