using XenDisk.Abi;
using XenDisk.Backend.Tests.EndToEnd;
using XenDisk.Backend.Tests.Harness;
using XenDisk.TestFrontend;
using XenDisk.Xen.Simulated;
using Xunit.Abstractions;

namespace XenDisk.Backend.Tests.ControlPlane;

/// <summary>
/// libxl's hotplug contract for devices with a "script" key (docs/E2E.md "Hotplug contract"):
/// InitWait even after a failed setup, so that the script can report the "error" node, and no
/// Connected before the script wrote hotplug-status=connected. Devices without the key are unchanged.
/// The test plays libxl and the script itself (runHotplugScript: false).
/// </summary>
public sealed class HotplugContractTests(ITestOutputHelper output)
{
    private const int FirstDevice = 51712;
    private const string Script = "/etc/xen/scripts/xendisk";

    [Fact]
    public async Task A_script_device_whose_disk_is_missing_waits_in_init_wait_with_its_error_and_closes_on_removal()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment attachment = bed.Attach(guest, FirstDevice, "no-such-disk", script: Script, runHotplugScript: false);

        // InitWait comes first, the failed open's "error" after it, never the disk-opened marker.
        await bed.WaitForBackendStateAsync(attachment, XenbusState.InitWait);
        await BackendTestBed.WaitUntilAsync(() => bed.ReadBackend(attachment, BlkifKeys.Error) is not null, "the failed open left its error");
        Assert.Contains("cannot open disk \"no-such-disk\"", bed.ReadBackend(attachment, BlkifKeys.Error), StringComparison.Ordinal);
        Assert.Null(bed.ReadBackend(attachment, BackendTestBed.DiskOpenedKey));
        Assert.Null(bed.ReadBackend(attachment, BlkifKeys.Sectors));
        // The backend logs the failure just after it publishes InitWait, so wait for the line too.
        await BackendTestBed.WaitUntilAsync(() => bed.Logs.WithEventId(1020).Any(), "the failed setup was logged");
        Assert.Single(bed.Logs.WithEventId(1020));

        bed.SetFrontendState(attachment, XenbusState.Initialised);
        await BackendTestBed.WaitUntilAsync(() => bed.Logs.WithEventId(1021).Any(), "the frontend's Initialised was refused");
        Assert.Equal(XenbusState.InitWait, bed.Toolstack.ReadBackendState(attachment));

        // The device's looks run in order, so the removal below is seen after this Connected.
        bed.SetFrontendState(attachment, XenbusState.Connected);
        await bed.Toolstack.DetachDiskAsync(attachment, BackendTestBed.Timeout);
        await BackendTestBed.WaitUntilAsync(() => bed.Backend.FindDevice(guest.Id, FirstDevice) is null, "the removed device was forgotten");
        Assert.Single(bed.Logs.WithEventId(1021));
        Assert.Empty(bed.Logs.WithEventId(1005));
        Assert.Equal(0, bed.Hypervisor.ActiveGrantMappings);
    }

    [Fact]
    public async Task A_healthy_script_device_connects_only_after_hotplug_status_connected()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        bed.Disks.Add("disk", 4 << 20);
        DiskAttachment attachment = bed.Attach(guest, FirstDevice, "disk", script: Script, runHotplugScript: false);
        await bed.WaitForBackendStateAsync(attachment, XenbusState.InitWait);
        Assert.Null(bed.ReadBackend(attachment, BlkifKeys.Error));

        await using var frontend = new BlockFrontend(bed.Hypervisor, guest, attachment, FrontendHarness.Options());
        Task connecting = frontend.ConnectAsync();
        await bed.Toolstack.WaitForFrontendStateAsync(attachment, XenbusState.Initialised, BackendTestBed.Timeout);
        await BackendTestBed.WaitUntilAsync(() => bed.Logs.WithEventId(1022).Any(), "the backend saw the frontend ready and held back");
        Assert.Equal(XenbusState.InitWait, bed.Toolstack.ReadBackendState(attachment));
        Assert.False(connecting.IsCompleted);
        Assert.Empty(bed.Logs.WithEventId(1005));

        bed.WriteBackend(attachment, BlkifKeys.HotplugStatus, "connected");
        await connecting.WaitAsync(BackendTestBed.Timeout);
        Assert.Equal(XenbusState.Connected, bed.Toolstack.ReadBackendState(attachment));
        await FrontendHarness.WriteReadVerifyAsync(frontend, 8, 16384, 7, new MemoryBlockDeviceView(bed.Disks["disk"]));
        await FrontendHarness.DisconnectCleanlyAsync(bed, frontend);
    }

    [Fact]
    public async Task Hotplug_status_error_keeps_a_script_device_from_connecting()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        bed.Disks.Add("disk", 4 << 20);
        DiskAttachment attachment = bed.Attach(guest, FirstDevice, "disk", script: Script, runHotplugScript: false);
        await bed.WaitForBackendStateAsync(attachment, XenbusState.InitWait);
        bed.WriteBackend(attachment, "hotplug-error", "xendisk: refused by the script");
        bed.WriteBackend(attachment, BlkifKeys.HotplugStatus, "error");

        bed.SetFrontendState(attachment, XenbusState.Initialised);
        await BackendTestBed.WaitUntilAsync(() => bed.Logs.WithEventId(1023).Any(), "the backend saw the script's failure");
        Assert.Contains("refused by the script", Assert.Single(bed.Logs.WithEventId(1023)).Message, StringComparison.Ordinal);
        Assert.Equal(XenbusState.InitWait, bed.Toolstack.ReadBackendState(attachment));
        Assert.Empty(bed.Logs.WithEventId(1005));

        await bed.Toolstack.DetachDiskAsync(attachment, BackendTestBed.Timeout);
        await BackendTestBed.WaitUntilAsync(() => bed.Disks.OpenHandles == 0, "the disk was closed");
    }

    [Fact]
    public async Task A_device_without_a_script_connects_without_hotplug_status_and_fails_closed()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment attachment = await bed.AttachReadyAsync(guest, FirstDevice, "disk", 4 << 20);
        Assert.Null(bed.ReadBackend(attachment, BlkifKeys.Script));

        await using BlockFrontend frontend = await FrontendHarness.ConnectAsync(bed, attachment);
        Assert.Null(bed.ReadBackend(attachment, BlkifKeys.HotplugStatus));
        Assert.Equal(XenbusState.Connected, bed.Toolstack.ReadBackendState(attachment));
        await FrontendHarness.WriteReadVerifyAsync(frontend, 0, 8192, 3, new MemoryBlockDeviceView(bed.Disks["disk"]));
        await FrontendHarness.DisconnectCleanlyAsync(bed, frontend);

        DiskAttachment missing = bed.Attach(guest, FirstDevice + 16, "no-such-disk");
        await bed.WaitForBackendStateAsync(missing, XenbusState.Closed);
        Assert.Contains("cannot open disk", bed.ReadBackend(missing, BlkifKeys.Error), StringComparison.Ordinal);
        Assert.Empty(bed.Logs.WithEventId(1020));
    }
}
