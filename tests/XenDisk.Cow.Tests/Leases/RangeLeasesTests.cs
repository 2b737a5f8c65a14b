using XenDisk.Cow.Leases;

namespace XenDisk.Cow.Tests.Leases;

/// <summary>The remap fast path's leases: pinned stripes hold off whoever changes the mapping, and barred stripes turn new remaps away.</summary>
public sealed class RangeLeasesTests
{
    private static readonly TimeSpan HangGuard = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task A_bar_waits_for_the_pins_in_flight_and_turns_new_pins_away()
    {
        var leases = new RangeLeases(16);
        Assert.True(leases.TryPin(3, 2));

        Task bar = Task.Run(() => leases.Bar(4, 1));
        Assert.True(SpinWait.SpinUntil(() => leases.IsBarred(4), HangGuard), "the bar was never counted");
        Assert.False(leases.TryPin(4, 1));
        Assert.False(leases.TryPin(2, 4));
        Assert.True(leases.TryPin(5, 1));
        Assert.False(bar.IsCompleted);

        leases.Unpin(3, 2);
        await bar.WaitAsync(HangGuard);
        leases.Unbar(4, 1);
        Assert.True(leases.TryPin(4, 1));
    }

    [Fact]
    public async Task Ranges_wrap_around_the_stripes()
    {
        var leases = new RangeLeases(8);
        Assert.True(leases.TryPin(7, 2));
        leases.Bar(2, 1);
        Assert.False(leases.TryPin(1, 2));
        Assert.True(leases.TryPin(3, 1));
        leases.Unbar(2, 1);
        leases.Unpin(7, 2);
        leases.Unpin(3, 1);

        Task bar = Task.Run(() => leases.Bar(0, 1));
        await bar.WaitAsync(HangGuard);
    }

    [Fact]
    public void A_lease_value_is_never_the_empty_lease()
    {
        Assert.NotEqual(0, RangeLeases.Encode(0, 1));
        Assert.Equal((5, 3), RangeLeases.Decode(RangeLeases.Encode(5, 3)));
    }
}
