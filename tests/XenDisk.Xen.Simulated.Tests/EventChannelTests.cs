using XenDisk.Xen;
using XenDisk.Xen.Simulated;
using Tmds.Linux;

namespace XenDisk.Xen.Simulated.Tests;

public sealed class EventChannelTests : IDisposable
{
    private readonly SimulatedHypervisor _hypervisor = new();
    private readonly SimulatedDomain _guest;
    private readonly SimulatedEventChannels _frontend;
    private readonly SimulatedEventChannels _backend;
    private readonly uint _frontendPort;
    private readonly uint _backendPort;

    public EventChannelTests()
    {
        _guest = _hypervisor.CreateDomain("guest");
        _frontend = _hypervisor.OpenEventChannels(_guest);
        _backend = _hypervisor.OpenEventChannels(_hypervisor.Dom0);
        _frontendPort = _frontend.BindUnboundPort(0);
        _backendPort = _backend.BindInterdomain(_guest.Id, _frontendPort);

        // Binding marks the new local port pending once (evtchn_bind_interdomain); take that event.
        Assert.Equal((int)_backendPort, _backend.WaitPending(0));
        Assert.Equal(0, _backend.Unmask(_backendPort));
    }

    public void Dispose()
    {
        _frontend.Dispose();
        _backend.Dispose();
        _hypervisor.Dispose();
    }

    [Fact]
    public void Notify_delivers_to_the_other_end_once()
    {
        Assert.Equal(0, _frontend.Notify(_frontendPort));
        Assert.Equal((int)_backendPort, _backend.WaitPending(1000));
        Assert.Equal(-1, _backend.WaitPending(0));

        Assert.Equal(0, _backend.Notify(_backendPort));
        Assert.Equal((int)_frontendPort, _frontend.WaitPending(1000));
    }

    [Fact]
    public void Notifies_coalesce_while_pending_and_unmask_redelivers()
    {
        long before = _hypervisor.Dom0.NotificationsDelivered;
        for (int i = 0; i < 10; i++)
        {
            Assert.Equal(0, _frontend.Notify(_frontendPort));
        }

        Assert.Equal((int)_backendPort, _backend.WaitPending(1000));
        Assert.Equal(-1, _backend.WaitPending(0));
        Assert.Equal(before + 1, _hypervisor.Dom0.NotificationsDelivered);

        // Masked since delivery: a further event sets the pending bit only...
        Assert.Equal(0, _frontend.Notify(_frontendPort));
        Assert.Equal(-1, _backend.WaitPending(0));

        // ...and unmask delivers it.
        Assert.Equal(0, _backend.Unmask(_backendPort));
        Assert.Equal((int)_backendPort, _backend.WaitPending(0));
        Assert.Equal(before + 2, _hypervisor.Dom0.NotificationsDelivered);

        // Nothing pending: unmask delivers nothing.
        Assert.Equal(0, _backend.Unmask(_backendPort));
        Assert.Equal(-1, _backend.WaitPending(0));
    }

    [Fact]
    public void WaitPending_times_out_with_minus_one()
    {
        Assert.Equal(-1, _backend.WaitPending(20));
    }

    [Fact]
    public async Task Interrupt_wakes_a_blocked_waiter()
    {
        Task<int> waiter = Task.Factory.StartNew(() => _backend.WaitPending(-1), TaskCreationOptions.LongRunning);
        await WaitUntilBlockedAsync(waiter);
        _backend.Interrupt();
        Assert.Equal(-1, await waiter.WaitAsync(TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public void Interrupt_before_waiting_is_not_lost()
    {
        _backend.Interrupt();
        Assert.Equal(-1, _backend.WaitPending(-1));
    }

    [Fact]
    public async Task Notify_from_another_thread_wakes_a_blocked_waiter()
    {
        Task<int> waiter = Task.Factory.StartNew(() => _backend.WaitPending(10_000), TaskCreationOptions.LongRunning);
        await WaitUntilBlockedAsync(waiter);
        Assert.Equal(0, _frontend.Notify(_frontendPort));
        Assert.Equal((int)_backendPort, await waiter.WaitAsync(TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public void Unbind_leaves_the_remote_port_unbound_and_rebindable()
    {
        _backend.Unbind(_backendPort);

        Assert.NotEqual(0, _frontend.Notify(_frontendPort));
        Assert.True(_backend.Notify(_backendPort) < 0);

        // The frontend's port is unbound-for-dom0 again: a reconnecting backend can bind it.
        uint again = _backend.BindInterdomain(_guest.Id, _frontendPort);
        Assert.Equal((int)again, _backend.WaitPending(0));
        Assert.Equal(0, _frontend.Notify(_frontendPort));
    }

    [Fact]
    public void BindInterdomain_refuses_a_port_not_unbound_for_us()
    {
        SimulatedDomain other = _hypervisor.CreateDomain("other");
        using SimulatedEventChannels otherChannels = _hypervisor.OpenEventChannels(other);
        uint forSomeoneElse = _frontend.BindUnboundPort(other.Id);

        Assert.Equal(LibC.EINVAL, Assert.Throws<XenException>(() => _backend.BindInterdomain(_guest.Id, forSomeoneElse)).Errno);
        Assert.Throws<XenException>(() => _backend.BindInterdomain(_guest.Id, _frontendPort));
        Assert.Throws<XenException>(() => _backend.BindInterdomain(_guest.Id, 999));
        Assert.Equal((int)otherChannels.BindInterdomain(_guest.Id, forSomeoneElse), otherChannels.WaitPending(0));
    }

    [Fact]
    public void Ports_of_another_handle_cannot_be_used()
    {
        using SimulatedEventChannels second = _hypervisor.OpenEventChannels(_hypervisor.Dom0);
        Assert.Equal(-LibC.EINVAL, second.Notify(_backendPort));
        Assert.Equal(-LibC.EINVAL, second.Unmask(_backendPort));
        Assert.Throws<XenException>(() => second.Unbind(_backendPort));
    }

    [Fact]
    public void Destroying_the_guest_closes_its_ports()
    {
        _hypervisor.DestroyDomain(_guest);
        Assert.True(_backend.Notify(_backendPort) < 0);
    }

    [Fact]
    public void Each_handle_counts_its_deliveries()
    {
        long before = _backend.Deliveries;
        _frontend.Notify(_frontendPort);
        _frontend.Notify(_frontendPort);
        Assert.Equal((int)_backendPort, _backend.WaitPending(0));
        Assert.Equal(before + 1, _backend.Deliveries);
    }

    /// <summary>Returns once <paramref name="waiter"/> sleeps inside WaitPending, so that what follows must wake it.</summary>
    private async Task WaitUntilBlockedAsync(Task<int> waiter)
    {
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        while (_backend.BlockedWaiters == 0)
        {
            Assert.False(waiter.IsCompleted, "WaitPending returned before anything woke it");
            await Task.Delay(1, deadline.Token);
        }
    }
}
