using XenDisk.Service.Control;
using XenDisk.TestSupport.Service;

namespace XenDisk.Service.Tests;

/// <summary>
/// `xendisk status` reports what the service keeps per device (device objects, shared disks, open
/// overlays): a soak run compares them before and after guests came and went, so they must follow
/// the devices up and back down.
/// </summary>
public sealed class TrackedStatusTests : IDisposable
{
    private readonly TempDirectory _work = new("xendisk-tracked-");

    public void Dispose() => _work.Dispose();

    [Fact]
    public async Task Tracked_objects_follow_the_devices_and_go_back_when_they_are_gone()
    {
        string images = Directory.CreateDirectory(Path.Combine(_work.Path, "images")).FullName;
        string basePath = Path.Combine(images, "golden.img");
        File.WriteAllBytes(basePath, new byte[4 << 20]);
        await using SimulatedService service = await SimulatedService.StartAsync(_work.Path, images);
        TrackedReport baseline = Assert.IsType<TrackedReport>((await service.StatusAsync()).Tracked);

        AttachedDisk first = await service.AttachAsync($"cow:{basePath},{Path.Combine(images, "a.qcow2")}");
        AttachedDisk second = await service.AttachAsync($"cow:{basePath},{Path.Combine(images, "b.bitmap")},format=bitmap");
        ServiceStatusReport both = await service.StatusAsync();
        TrackedReport attached = Assert.IsType<TrackedReport>(both.Tracked);
        Assert.Equal(baseline with { Devices = baseline.Devices + 2, SharedDisks = baseline.SharedDisks + 2, Overlays = baseline.Overlays + 2 }, attached);

        await service.DetachAsync(first);
        await service.DetachAsync(second);
        ServiceStatusReport after = await service.WaitForAsync(s => s.Tracked?.Devices == baseline.Devices, "the devices to be forgotten");
        Assert.Equal(baseline, after.Tracked);
    }
}
