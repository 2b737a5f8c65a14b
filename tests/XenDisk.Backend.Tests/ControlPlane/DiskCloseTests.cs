using XenDisk.Backend.Tests.Harness;
using XenDisk.Xen.Simulated;
using Xunit.Abstractions;

namespace XenDisk.Backend.Tests.ControlPlane;

/// <summary>
/// The backend flushes a writable disk before it closes it, so writes a guest saw completed are
/// durable after a stop or a removal even when the guest never sent a flush. A read-only disk has
/// nothing to make durable and is closed without one.
/// </summary>
public sealed class DiskCloseTests(ITestOutputHelper output)
{
    private const int Device = 51712;

    [Theory]
    [InlineData(false, 1)]
    [InlineData(true, 0)]
    public async Task Stopping_the_backend_flushes_only_writable_disks_before_closing_them(bool readOnly, int expectedFlushes)
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        await bed.AttachReadyAsync(guest, Device, "disk", readOnly: readOnly);
        Assert.Equal(1, bed.Disks.OpenHandles);
        int before = bed.Disks.Flushes;

        await bed.Backend.StopAsync(CancellationToken.None).WaitAsync(BackendTestBed.Timeout);

        Assert.Equal(0, bed.Disks.OpenHandles);
        Assert.Equal(expectedFlushes, bed.Disks.Flushes - before);
    }

    [Fact]
    public async Task Removing_a_writable_device_flushes_its_disk_before_closing_it()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        var attachment = await bed.AttachReadyAsync(guest, Device, "disk");
        int before = bed.Disks.Flushes;

        await bed.Toolstack.DetachDiskAsync(attachment, BackendTestBed.Timeout);
        await BackendTestBed.WaitUntilAsync(() => bed.Disks.OpenHandles == 0, "the removed device's disk was closed");

        Assert.Equal(1, bed.Disks.Flushes - before);
    }
}
