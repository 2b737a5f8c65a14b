using XenDisk.Abi;
using XenDisk.Backend.Tests.Harness;
using XenDisk.Xen;
using XenDisk.Xen.Simulated;
using Xunit.Abstractions;

namespace XenDisk.Backend.Tests.ControlPlane;

/// <summary>
/// xl migrate to the same host: the incoming domain of a VM gets a device on each of the VM's disks
/// while the outgoing domain still has its own. The two devices of one VM share one open disk, which
/// closes (after a flush) only when the last of them goes; devices of different VMs each open the disk.
/// </summary>
public sealed class SharedDiskTests(ITestOutputHelper output)
{
    private const int Device = 51712;

    [Fact]
    public async Task The_incoming_domain_of_a_vm_shares_the_outgoing_domains_disk_until_the_last_device_goes()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        bed.Disks.Add("disk", 4 << 20);
        SimulatedDomain outgoing = bed.CreateGuest("vm1");
        SimulatedDomain incoming = bed.CreateGuest("vm1--incoming");
        bed.SetVm(outgoing, "6b9e1b5e-0d4c-4c59-9d84-2b8f1c7a1e01");
        bed.SetVm(incoming, "6b9e1b5e-0d4c-4c59-9d84-2b8f1c7a1e01");
        DiskAttachment before = bed.Attach(outgoing, Device, "disk");
        await bed.WaitForBackendStateAsync(before, XenbusState.InitWait);
        await bed.WaitForDiskOpenedAsync(before);
        DiskAttachment after = bed.Attach(incoming, Device, "disk");
        await bed.WaitForBackendStateAsync(after, XenbusState.InitWait);
        await bed.WaitForDiskOpenedAsync(after);

        Assert.Equal(1, bed.Disks.Opens);
        Assert.Equal(1, bed.Disks.OpenHandles);
        Assert.Contains(bed.Logs.WithEventId(1025), e => e.Message.Contains(after.BackendPath, StringComparison.Ordinal) && e.Message.Contains("/vm/6b9e1b5e", StringComparison.Ordinal));

        // The outgoing domain goes: the disk is flushed for it but stays open for the incoming one.
        int flushes = bed.Disks.Flushes;
        await bed.Toolstack.DetachDiskAsync(before, BackendTestBed.Timeout);
        await BackendTestBed.WaitUntilAsync(() => bed.Logs.WithEventId(1009).Any(e => e.Message.Contains(before.BackendPath, StringComparison.Ordinal)),
            "the outgoing device was released");
        Assert.Equal(1, bed.Disks.OpenHandles);
        Assert.Equal(flushes + 1, bed.Disks.Flushes);
        Assert.Equal(XenbusState.InitWait, bed.Toolstack.ReadBackendState(after));

        await bed.Toolstack.DetachDiskAsync(after, BackendTestBed.Timeout);
        await BackendTestBed.WaitUntilAsync(() => bed.Disks.OpenHandles == 0, "the last device's removal closed the disk");
    }

    [Fact]
    public async Task Devices_of_different_vms_or_of_domains_without_a_vm_each_open_the_disk()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        bed.Disks.Add("disk", 4 << 20);
        SimulatedDomain first = bed.CreateGuest("a");
        SimulatedDomain second = bed.CreateGuest("b");
        SimulatedDomain third = bed.CreateGuest("c");
        bed.SetVm(first, "00000000-0000-4000-8000-00000000000a");
        bed.SetVm(second, "00000000-0000-4000-8000-00000000000b");
        DiskAttachment[] devices = [bed.Attach(first, Device, "disk"), bed.Attach(second, Device, "disk"), bed.Attach(third, Device, "disk")];
        foreach (DiskAttachment device in devices)
        {
            await bed.WaitForBackendStateAsync(device, XenbusState.InitWait);
            await bed.WaitForDiskOpenedAsync(device);
        }

        Assert.Equal(3, bed.Disks.Opens);
        Assert.Equal(3, bed.Disks.OpenHandles);
        Assert.Empty(bed.Logs.WithEventId(1025));
    }
}
