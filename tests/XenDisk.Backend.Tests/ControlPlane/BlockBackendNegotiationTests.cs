using Xunit.Abstractions;
using XenDisk.Abi;
using XenDisk.Backend.ControlPlane;
using XenDisk.Backend.Tests.Harness;
using XenDisk.Xen.Simulated;

namespace XenDisk.Backend.Tests.ControlPlane;

/// <summary>
/// The control plane against the simulated xenstore and toolstack, up to the point where rings
/// would be mapped: discovery, validation of the toolstack's and the frontend's keys, what is
/// published, the error node, the script filter, backend kinds and removal.
/// </summary>
public sealed class BlockBackendNegotiationTests(ITestOutputHelper output)
{
    private const int FirstDevice = 51712;
    private const int SecondDevice = 51728;

    [Fact]
    public async Task A_new_device_is_offered_with_every_feature_then_init_wait()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();

        DiskAttachment disk = await bed.AttachReadyAsync(guest, FirstDevice, "disk-a", sizeBytes: 8 << 20);

        Assert.Equal("1", bed.ReadBackend(disk, BlkifKeys.FeatureFlushCache));
        Assert.Equal("1", bed.ReadBackend(disk, BlkifKeys.FeatureBarrier));
        Assert.Equal("1", bed.ReadBackend(disk, BlkifKeys.FeatureDiscard));
        Assert.Equal("512", bed.ReadBackend(disk, BlkifKeys.DiscardGranularity));
        Assert.Equal("0", bed.ReadBackend(disk, BlkifKeys.DiscardAlignment));
        Assert.Equal("1", bed.ReadBackend(disk, BlkifKeys.DiscardSecure));
        Assert.Equal("256", bed.ReadBackend(disk, BlkifKeys.FeatureMaxIndirectSegments));
        Assert.Equal("1", bed.ReadBackend(disk, BlkifKeys.FeaturePersistent));
        Assert.Equal("4", bed.ReadBackend(disk, BlkifKeys.MultiQueueMaxQueues));
        Assert.Equal("4", bed.ReadBackend(disk, BlkifKeys.MaxRingPageOrder));
        Assert.Null(bed.ReadBackend(disk, BlkifKeys.Error));

        DeviceStatus status = Assert.Single(bed.Backend.Devices);
        Assert.Equal(disk.BackendPath, status.BackendPath);
        Assert.Equal("vbd", status.Kind);
        Assert.Equal(guest.Id, status.FrontendDomainId);
        Assert.Equal(FirstDevice, status.DeviceId);
        Assert.Equal(XenbusState.InitWait, status.State);
        Assert.Equal(8 << 20, status.Disk!.SizeBytes);
        Assert.Equal(disk.FrontendPath, status.FrontendPath);
        Assert.Empty(status.Queues);
        Assert.Equal(status.BackendPath, bed.Backend.FindDevice(guest.Id, FirstDevice)?.BackendPath);
        Assert.Equal(1, bed.Disks.OpenHandles);
    }

    [Fact]
    public async Task Options_shape_what_is_published()
    {
        BackendOptions options = BackendTestBed.DefaultOptions with { MaxQueues = 2, MaxRingPageOrder = 1, MaxIndirectSegments = 0, PersistentGrants = false, Discard = false };
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output, options);

        DiskAttachment disk = await bed.AttachReadyAsync(bed.CreateGuest(), FirstDevice, "disk-a");

        Assert.Equal("2", bed.ReadBackend(disk, BlkifKeys.MultiQueueMaxQueues));
        Assert.Equal("1", bed.ReadBackend(disk, BlkifKeys.MaxRingPageOrder));
        Assert.Equal("0", bed.ReadBackend(disk, BlkifKeys.FeaturePersistent));
        Assert.Equal("0", bed.ReadBackend(disk, BlkifKeys.FeatureDiscard));
        Assert.Null(bed.ReadBackend(disk, BlkifKeys.FeatureMaxIndirectSegments));
        Assert.Null(bed.ReadBackend(disk, BlkifKeys.DiscardGranularity));
    }

    [Fact]
    public async Task A_read_only_disk_is_not_offered_discard()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);

        DiskAttachment disk = await bed.AttachReadyAsync(bed.CreateGuest(), FirstDevice, "disk-a", readOnly: true);

        Assert.Equal("0", bed.ReadBackend(disk, BlkifKeys.FeatureDiscard));
        Assert.True(Assert.Single(bed.Backend.Devices).ReadOnly);
    }

    [Fact]
    public async Task Devices_present_before_start_are_found_on_the_first_look()
    {
        await using BackendTestBed bed = BackendTestBed.Create(output);
        SimulatedDomain guest = bed.CreateGuest();
        bed.Disks.Add("disk-a", 1 << 20);
        bed.Disks.Add("disk-b", 1 << 20);
        DiskAttachment first = bed.Attach(guest, FirstDevice, "disk-a");
        DiskAttachment second = bed.Attach(guest, SecondDevice, "disk-b");

        await bed.StartBackendAsync();

        await bed.WaitForBackendStateAsync(first, XenbusState.InitWait);
        await bed.WaitForBackendStateAsync(second, XenbusState.InitWait);
        Assert.Equal(2, bed.Backend.Devices.Count);
    }

    public static TheoryData<string, string?, string> BadToolstackKeys => new()
    {
        { BlkifKeys.Params, null, "missing \"params\"" },
        { BlkifKeys.Mode, "rw", "bad \"mode\"" },
        { BlkifKeys.FrontendId, "guest", "bad \"frontend-id\"" },
        { BlkifKeys.FrontendId, "0", "does not match" },
        { BlkifKeys.Frontend, "/local/domain/0/device/vbd/51712", "bad \"frontend\"" },
        { BlkifKeys.Params, "no-such-disk", "cannot open disk \"no-such-disk\"" },
    };

    [Theory]
    [MemberData(nameof(BadToolstackKeys))]
    public async Task Bad_toolstack_keys_close_that_device_with_an_error_and_spare_the_others(string key, string? value, string expectedError)
    {
        await using BackendTestBed bed = BackendTestBed.Create(output);
        SimulatedDomain guest = bed.CreateGuest();
        bed.Disks.Add("disk-a", 1 << 20);
        bed.Disks.Add("disk-b", 1 << 20);
        DiskAttachment bad = bed.Attach(guest, FirstDevice, "disk-a");
        if (value is null)
        {
            bed.RemoveBackendKey(bad, key);
        }
        else
        {
            bed.WriteBackend(bad, key, value);
        }

        await bed.StartBackendAsync();
        DiskAttachment good = bed.Attach(guest, SecondDevice, "disk-b");

        await bed.WaitForBackendStateAsync(bad, XenbusState.Closed);
        await bed.WaitForBackendStateAsync(good, XenbusState.InitWait);
        await bed.WaitForDiskOpenedAsync(good);
        Assert.Contains(expectedError, bed.ReadBackend(bad, BlkifKeys.Error), StringComparison.Ordinal);
        Assert.Null(bed.ReadBackend(good, BlkifKeys.Error));
        Assert.Contains(bed.Logs.WithEventId(1008), e => e.Message.Contains(bad.BackendPath, StringComparison.Ordinal));
        DeviceStatus badStatus = bed.Backend.Devices.Single(d => d.DeviceId == FirstDevice);
        Assert.Equal(XenbusState.Closed, badStatus.State);
        Assert.Contains(expectedError, badStatus.Error, StringComparison.Ordinal);
        Assert.Equal(1, bed.Disks.OpenHandles);

        // A failed device still answers the toolstack's removal, so that libxl does not time out.
        await bed.Toolstack.DetachDiskAsync(bad, BackendTestBed.Timeout);
        await BackendTestBed.WaitUntilAsync(() => bed.Backend.Devices.Count == 1, "the failed device is forgotten");
        Assert.Equal(XenbusState.InitWait, bed.Toolstack.ReadBackendState(good));
    }

    [Fact]
    public async Task A_missing_disk_is_retried_when_the_toolstack_reinitialises_the_device()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment disk = bed.Attach(guest, FirstDevice, "late-disk");
        await bed.WaitForBackendStateAsync(disk, XenbusState.Closed);
        Assert.Contains("no such file", bed.ReadBackend(disk, BlkifKeys.Error), StringComparison.Ordinal);

        bed.Disks.Add("late-disk", 1 << 20);
        bed.WriteBackend(disk, BlkifKeys.State, XenbusStateText.ToWire(XenbusState.Initialising));

        await bed.WaitForBackendStateAsync(disk, XenbusState.InitWait);
        Assert.Null(bed.ReadBackend(disk, BlkifKeys.Error));
    }

    public static TheoryData<string, string, string> ExcessiveFrontendRequests => new()
    {
        { BlkifKeys.MultiQueueNumQueues, "5", "5 queues" },
        { BlkifKeys.MultiQueueNumQueues, "0", "0 queues" },
        { BlkifKeys.RingPageOrder, "5", "ring-page-order 5" },
        { BlkifKeys.NumRingPages, "3", "not a power of two" },
        { BlkifKeys.Protocol, "sparc-abi", "protocol" },
    };

    [Theory]
    [MemberData(nameof(ExcessiveFrontendRequests))]
    public async Task A_frontend_asking_beyond_what_was_offered_is_refused_and_may_reconnect(string key, string value, string expectedError)
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment bad = await bed.AttachReadyAsync(guest, FirstDevice, "disk-a");
        DiskAttachment other = await bed.AttachReadyAsync(guest, SecondDevice, "disk-b");

        bed.WriteFrontend(bad, BlkifKeys.RingRef, "8");
        bed.WriteFrontend(bad, BlkifKeys.EventChannel, "1");
        bed.WriteFrontend(bad, key, value);
        bed.SetFrontendState(bad, XenbusState.Initialised);

        await bed.WaitForBackendStateAsync(bad, XenbusState.Closed);
        Assert.Contains(expectedError, bed.ReadBackend(bad, BlkifKeys.Error), StringComparison.Ordinal);
        Assert.Equal(XenbusState.InitWait, bed.Toolstack.ReadBackendState(other));
        Assert.Equal(0, bed.Hypervisor.ActiveGrantMappings);

        // blkback's "prepare for reconnect": the frontend closes and starts over.
        bed.SetFrontendState(bad, XenbusState.Closed);
        bed.SetFrontendState(bad, XenbusState.Initialising);
        await bed.WaitForBackendStateAsync(bad, XenbusState.InitWait);
        Assert.Null(bed.ReadBackend(bad, BlkifKeys.Error));
    }

    [Fact]
    public async Task Ring_refs_that_cannot_be_mapped_close_the_device_without_leaks()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment disk = await bed.AttachReadyAsync(guest, FirstDevice, "disk-a");

        // Refs the guest never granted.
        bed.WriteFrontend(disk, BlkifKeys.RingPageOrder, "1");
        bed.WriteFrontend(disk, BlkifKeys.RingRefN(0), "1000");
        bed.WriteFrontend(disk, BlkifKeys.RingRefN(1), "1001");
        bed.WriteFrontend(disk, BlkifKeys.EventChannel, "1");
        bed.SetFrontendState(disk, XenbusState.Initialised);

        await bed.WaitForBackendStateAsync(disk, XenbusState.Closed);
        Assert.Contains("mapping queue 0's ring", bed.ReadBackend(disk, BlkifKeys.Error), StringComparison.Ordinal);
        Assert.Equal(0, bed.Hypervisor.ActiveGrantMappings);
    }

    [Fact]
    public async Task An_event_channel_that_cannot_be_bound_closes_the_device_and_unmaps_the_ring()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment disk = await bed.AttachReadyAsync(guest, FirstDevice, "disk-a");
        GuestPage ringPage = guest.AllocatePage();
        uint ringRef = guest.GrantAccess(0, ringPage, readOnly: false);

        bed.WriteFrontend(disk, BlkifKeys.RingRef, ringRef.ToString(System.Globalization.CultureInfo.InvariantCulture));
        bed.WriteFrontend(disk, BlkifKeys.EventChannel, "77");
        bed.SetFrontendState(disk, XenbusState.Initialised);

        await bed.WaitForBackendStateAsync(disk, XenbusState.Closed);
        Assert.Contains("binding queue 0's event channel 77", bed.ReadBackend(disk, BlkifKeys.Error), StringComparison.Ordinal);
        Assert.Equal(0, bed.Hypervisor.ActiveGrantMappings);
        Assert.False(guest.IsMapped(ringRef));
    }

    [Fact]
    public async Task The_script_filter_leaves_other_devices_alone()
    {
        BackendOptions options = BackendTestBed.DefaultOptions with { HotplugScriptFilter = "xendisk" };
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output, options);
        SimulatedDomain guest = bed.CreateGuest();
        bed.Disks.Add("disk-a", 1 << 20);
        bed.Disks.Add("disk-b", 1 << 20);
        bed.Disks.Add("disk-c", 1 << 20);

        DiskAttachment blockScript = bed.Attach(guest, SecondDevice, "disk-b", script: "/etc/xen/scripts/block");
        DiskAttachment noScript = bed.Attach(guest, SecondDevice + 16, "disk-c");
        DiskAttachment ours = bed.Attach(guest, FirstDevice, "disk-a", script: "/etc/xen/scripts/xendisk");

        await bed.WaitForBackendStateAsync(ours, XenbusState.InitWait);
        await bed.WaitForDiskOpenedAsync(ours);
        await BackendTestBed.WaitUntilAsync(() => bed.Logs.WithEventId(1003).Count() >= 2, "both foreign devices were looked at");
        Assert.Equal(XenbusState.Initialising, bed.Toolstack.ReadBackendState(blockScript));
        Assert.Equal(XenbusState.Initialising, bed.Toolstack.ReadBackendState(noScript));
        Assert.Null(bed.ReadBackend(blockScript, BlkifKeys.FeatureFlushCache));
        Assert.Equal(ours.BackendPath, Assert.Single(bed.Backend.Devices).BackendPath);
        Assert.Null(bed.Backend.FindDevice(guest.Id, SecondDevice));
        Assert.Equal(1, bed.Disks.Opens);
    }

    [Fact]
    public async Task The_vbd3_kind_is_served_when_configured()
    {
        BackendOptions options = BackendTestBed.DefaultOptions with { Kinds = ["vbd3"] };
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output, options);
        SimulatedDomain guest = bed.CreateGuest();
        bed.Disks.Add("disk-a", 1 << 20);
        bed.Disks.Add("disk-b", 1 << 20);

        DiskAttachment plainVbd = bed.Attach(guest, SecondDevice, "disk-b", kind: "vbd");
        DiskAttachment vbd3 = bed.Attach(guest, FirstDevice, "disk-a", kind: "vbd3");

        await bed.WaitForBackendStateAsync(vbd3, XenbusState.InitWait);
        Assert.Contains("/backend/vbd3/", vbd3.BackendPath, StringComparison.Ordinal);
        Assert.Equal("vbd3", Assert.Single(bed.Backend.Devices).Kind);
        Assert.Equal(XenbusState.Initialising, bed.Toolstack.ReadBackendState(plainVbd));
    }

    [Fact]
    public async Task Toolstack_removal_closes_the_device_and_forgets_it()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment disk = await bed.AttachReadyAsync(guest, FirstDevice, "disk-a");

        await bed.Toolstack.DetachDiskAsync(disk, BackendTestBed.Timeout);

        Assert.Null(bed.Read(disk.BackendPath + "/" + BlkifKeys.State));
        await BackendTestBed.WaitUntilAsync(() => bed.Backend.Devices.Count == 0, "the device is forgotten");
        await BackendTestBed.WaitUntilAsync(() => bed.Disks.OpenHandles == 0, "the disk is closed");
        Assert.Contains(bed.Logs.WithEventId(1009), e => e.Message.Contains(disk.BackendPath, StringComparison.Ordinal));

        // The same device id can be attached again and is served afresh.
        DiskAttachment again = bed.Attach(guest, FirstDevice, "disk-a");
        await bed.WaitForBackendStateAsync(again, XenbusState.InitWait);
    }

    [Fact]
    public async Task Conflicting_transactions_are_retried()
    {
        await using BackendTestBed bed = BackendTestBed.Create(output);
        SimulatedDomain guest = bed.CreateGuest();
        bed.Disks.Add("disk-a", 1 << 20);
        DiskAttachment disk = bed.Attach(guest, FirstDevice, "disk-a");

        // The backend's first commit (features + InitWait) is the next one.
        bed.Hypervisor.ForceXenStoreConflicts(5);
        await bed.StartBackendAsync();

        await bed.WaitForBackendStateAsync(disk, XenbusState.InitWait);
        Assert.Equal("1", bed.ReadBackend(disk, BlkifKeys.FeatureFlushCache));
    }

    [Fact]
    public async Task Invalid_options_fail_start_up()
    {
        await using BackendTestBed bed = BackendTestBed.Create(output, new BackendOptions { MaxRingPageOrder = 9 });

        ArgumentException error = await Assert.ThrowsAsync<ArgumentException>(bed.StartBackendAsync);

        Assert.Contains("MaxRingPageOrder", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Resizing_an_unknown_device_is_refused()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);

        await Assert.ThrowsAsync<KeyNotFoundException>(() => bed.Backend.ResizeAsync(7, FirstDevice));
    }
}
