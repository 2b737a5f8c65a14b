using XenDisk.Abi;
using XenDisk.Backend.ControlPlane;
using XenDisk.Backend.Tests.Harness;
using XenDisk.Xen;
using XenDisk.Xen.Simulated;
using Xunit.Abstractions;

namespace XenDisk.Backend.Tests.ControlPlane;

/// <summary>
/// Connecting and disconnecting rings, with a frontend that only publishes keys and rings: what
/// gets mapped and bound, what Connected publishes, the close/reconnect cycle, halted rings,
/// resize, restart and removal, and that every mapping is released.
/// </summary>
public sealed class BlockBackendConnectionTests(ITestOutputHelper output)
{
    private const int FirstDevice = 51712;
    private const int SecondDevice = 51728;

    public static TheoryData<int, int, RawRingKeys> RingShapes => new()
    {
        { 1, 1, RawRingKeys.SingleRef },
        { 1, 4, RawRingKeys.PageOrder },
        { 1, 16, RawRingKeys.PageOrder },
        { 1, 8, RawRingKeys.NumRingPages },
        { 2, 2, RawRingKeys.PageOrder },
        { 4, 1, RawRingKeys.SingleRef },
    };

    [Theory]
    [MemberData(nameof(RingShapes))]
    public async Task Connect_maps_every_ring_and_publishes_the_geometry(int queues, int ringPages, RawRingKeys spelling)
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment disk = await bed.AttachReadyAsync(guest, FirstDevice, "disk-a", sizeBytes: 3 << 20);
        using var frontend = new RawRingFrontend(bed, disk);

        frontend.Publish(queues, ringPages, spelling);

        await bed.WaitForBackendStateAsync(disk, XenbusState.Connected);
        Assert.Equal("6144", bed.ReadBackend(disk, BlkifKeys.Sectors));
        Assert.Equal("512", bed.ReadBackend(disk, BlkifKeys.SectorSize));
        Assert.Equal("512", bed.ReadBackend(disk, BlkifKeys.PhysicalSectorSize));
        Assert.Equal("0", bed.ReadBackend(disk, BlkifKeys.Info));
        Assert.Equal(queues * ringPages, bed.Hypervisor.ActiveGrantMappings);

        DeviceStatus status = Assert.Single(bed.Backend.Devices);
        Assert.Equal(XenbusState.Connected, status.State);
        Assert.Equal(BlkifProtocol.X86_64, status.Protocol);
        Assert.Equal(queues, status.Queues.Count);
        for (int q = 0; q < queues; q++)
        {
            QueueStatus queue = status.Queues[q];
            Assert.Equal(q, queue.QueueIndex);
            Assert.Equal(ringPages, queue.RingPageCount);
            Assert.Equal(frontend.Port(q), queue.RemotePort);
            Assert.Equal(RingGeometry.EntryCountForPages(BlkifProtocol.X86_64, ringPages), queue.Ring.Entries);
            Assert.Equal(ringPages, queue.Ring.Setup.RingPageCount);
        }

        Assert.False(status.Features!.PersistentGrants);
        Assert.Equal(256, status.Features.MaxIndirectSegments);
        Assert.True(status.Features.Discard);
    }

    [Fact]
    public async Task Close_then_reconnect_releases_and_remaps_the_rings()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment disk = await bed.AttachReadyAsync(guest, FirstDevice, "disk-a");
        using var frontend = new RawRingFrontend(bed, disk);
        frontend.Publish(queues: 2, ringPages: 2, RawRingKeys.PageOrder, persistent: true);
        await bed.WaitForBackendStateAsync(disk, XenbusState.Connected);
        Assert.True(Assert.Single(bed.Backend.Devices).Features!.PersistentGrants);

        frontend.SetState(XenbusState.Closing);
        await bed.WaitForBackendStateAsync(disk, XenbusState.Closing);
        Assert.Equal(0, bed.Hypervisor.ActiveGrantMappings);
        Assert.True(frontend.RingsUnmapped);
        AssertPortsUnbound(bed, frontend);
        Assert.Empty(Assert.Single(bed.Backend.Devices).Queues);

        frontend.SetState(XenbusState.Closed);
        await bed.WaitForBackendStateAsync(disk, XenbusState.Closed);

        frontend.SetState(XenbusState.Initialising);
        await bed.WaitForBackendStateAsync(disk, XenbusState.InitWait);
        frontend.Publish(queues: 1, ringPages: 4, RawRingKeys.PageOrder);
        await bed.WaitForBackendStateAsync(disk, XenbusState.Connected);
        Assert.Equal(4, bed.Hypervisor.ActiveGrantMappings);
        Assert.Equal(1, bed.Disks.Opens);
        Assert.Contains(bed.Logs.WithEventId(1012), e => e.Message.Contains(disk.BackendPath, StringComparison.Ordinal));
    }

    [Fact]
    public async Task The_X86_32_protocol_is_negotiated()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        DiskAttachment disk = await bed.AttachReadyAsync(bed.CreateGuest(), FirstDevice, "disk-a");
        using var frontend = new RawRingFrontend(bed, disk);

        frontend.Publish(protocol: BlkifProtocolNames.X86_32);

        await bed.WaitForBackendStateAsync(disk, XenbusState.Connected);
        DeviceStatus status = Assert.Single(bed.Backend.Devices);
        Assert.Equal(BlkifProtocol.X86_32, status.Protocol);
        Assert.Equal(RingGeometry.EntryCount(BlkifProtocol.X86_32, 0), status.Queues[0].Ring.Entries);
    }

    [Fact]
    public async Task A_read_only_device_is_published_with_vdisk_read_only()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        DiskAttachment disk = await bed.AttachReadyAsync(bed.CreateGuest(), FirstDevice, "disk-a", readOnly: true);
        using var frontend = new RawRingFrontend(bed, disk);

        frontend.Publish();

        await bed.WaitForBackendStateAsync(disk, XenbusState.Connected);
        Assert.Equal(((uint)VdiskInfo.ReadOnly).ToString(System.Globalization.CultureInfo.InvariantCulture), bed.ReadBackend(disk, BlkifKeys.Info));
        DeviceStatus status = Assert.Single(bed.Backend.Devices);
        Assert.True(status.Features!.ReadOnly);
        Assert.False(status.Features.Discard);
    }

    [Fact]
    public async Task Four_KiB_sectors_are_published_as_the_logical_sector_size()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        DiskAttachment disk = await bed.AttachReadyAsync(bed.CreateGuest(), FirstDevice, "disk-a", sizeBytes: 1 << 20, logicalSectorSize: 4096);
        using var frontend = new RawRingFrontend(bed, disk);

        frontend.Publish();

        await bed.WaitForBackendStateAsync(disk, XenbusState.Connected);
        Assert.Equal("4096", bed.ReadBackend(disk, BlkifKeys.SectorSize));
        Assert.Equal("4096", bed.ReadBackend(disk, BlkifKeys.PhysicalSectorSize));
        Assert.Equal("2048", bed.ReadBackend(disk, BlkifKeys.Sectors));
        Assert.Equal("4096", bed.ReadBackend(disk, BlkifKeys.DiscardGranularity));
    }

    [Fact]
    public async Task An_impossible_producer_index_halts_the_ring_and_closes_only_that_device()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment hostile = await bed.AttachReadyAsync(guest, FirstDevice, "disk-a");
        DiskAttachment healthy = await bed.AttachReadyAsync(guest, SecondDevice, "disk-b");
        using var hostileFrontend = new RawRingFrontend(bed, hostile);
        using var healthyFrontend = new RawRingFrontend(bed, healthy);
        hostileFrontend.Publish();
        healthyFrontend.Publish();
        await bed.WaitForBackendStateAsync(hostile, XenbusState.Connected);
        await bed.WaitForBackendStateAsync(healthy, XenbusState.Connected);

        // More requests than the ring has slots: ring.h's RING_REQUEST_PROD_OVERFLOW.
        hostileFrontend.PushRequestProducer(0, 100_000);

        await bed.WaitForBackendStateAsync(hostile, XenbusState.Closed);
        Assert.Contains("halted", bed.ReadBackend(hostile, BlkifKeys.Error), StringComparison.Ordinal);
        Assert.True(hostileFrontend.RingsUnmapped);
        Assert.Contains(bed.Logs.WithEventId(1010), e => e.Message.Contains(hostile.BackendPath, StringComparison.Ordinal));
        Assert.Equal(XenbusState.Connected, bed.Toolstack.ReadBackendState(healthy));
        Assert.Equal(1, bed.Hypervisor.ActiveGrantMappings);

        // The frontend may start over.
        hostileFrontend.SetState(XenbusState.Closed);
        hostileFrontend.SetState(XenbusState.Initialising);
        await bed.WaitForBackendStateAsync(hostile, XenbusState.InitWait);
        hostileFrontend.Publish();
        await bed.WaitForBackendStateAsync(hostile, XenbusState.Connected);
        Assert.Null(bed.ReadBackend(hostile, BlkifKeys.Error));
    }

    [Fact]
    public async Task Online_resize_rewrites_sectors_and_retriggers_the_frontend_watch()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment disk = await bed.AttachReadyAsync(guest, FirstDevice, "disk-a", sizeBytes: 1 << 20);
        using var frontend = new RawRingFrontend(bed, disk);
        frontend.Publish();
        await bed.WaitForBackendStateAsync(disk, XenbusState.Connected);

        using IXenStore guestStore = guest.Platform.OpenXenStore();
        string statePath = disk.BackendPath + "/" + BlkifKeys.State;
        guestStore.Watch(statePath, "resize");
        using var timeout = new CancellationTokenSource(BackendTestBed.Timeout);
        await guestStore.ReadWatchAsync(timeout.Token);

        Assert.False(await bed.Backend.ResizeAsync(guest.Id, FirstDevice).WaitAsync(BackendTestBed.Timeout));
        bed.Disks["disk-a"].Resize(2 << 20);
        Assert.True(await bed.Backend.ResizeAsync(guest.Id, FirstDevice).WaitAsync(BackendTestBed.Timeout));

        XenStoreWatchEvent fired = await guestStore.ReadWatchAsync(timeout.Token);
        Assert.Equal(statePath, fired.Path);
        Assert.Equal("4096", guestStore.Read(XenStoreTransaction.None, disk.BackendPath + "/" + BlkifKeys.Sectors));
        Assert.Equal(XenbusState.Connected, bed.Toolstack.ReadBackendState(disk));
        Assert.Equal(2 << 20, bed.Backend.FindDevice(guest.Id, FirstDevice)!.Disk!.SizeBytes);
        Assert.False(await bed.Backend.ResizeAsync(guest.Id, FirstDevice).WaitAsync(BackendTestBed.Timeout));
    }

    [Fact]
    public async Task Toolstack_removal_of_a_connected_device_releases_everything()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment disk = await bed.AttachReadyAsync(guest, FirstDevice, "disk-a");
        using var frontend = new RawRingFrontend(bed, disk);
        frontend.Publish(queues: 2, ringPages: 2, RawRingKeys.PageOrder);
        await bed.WaitForBackendStateAsync(disk, XenbusState.Connected);

        await bed.Toolstack.DetachDiskAsync(disk, BackendTestBed.Timeout);

        Assert.Equal(0, bed.Hypervisor.ActiveGrantMappings);
        AssertPortsUnbound(bed, frontend);
        await BackendTestBed.WaitUntilAsync(() => bed.Backend.Devices.Count == 0, "the device is forgotten");
        await BackendTestBed.WaitUntilAsync(() => bed.Disks.OpenHandles == 0, "the disk is closed");
    }

    [Fact]
    public async Task A_frontend_that_disappears_is_disconnected()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment disk = await bed.AttachReadyAsync(guest, FirstDevice, "disk-a");
        using var frontend = new RawRingFrontend(bed, disk);
        frontend.Publish();
        await bed.WaitForBackendStateAsync(disk, XenbusState.Connected);

        bed.Hypervisor.DestroyDomain(guest);

        await bed.WaitForBackendStateAsync(disk, XenbusState.Closed);
        Assert.Equal(0, bed.Hypervisor.ActiveGrantMappings);
    }

    [Fact]
    public async Task Stop_releases_everything_and_the_next_instance_reattaches()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment disk = await bed.AttachReadyAsync(guest, FirstDevice, "disk-a");
        using var frontend = new RawRingFrontend(bed, disk);
        frontend.Publish(ringPages: 2, spelling: RawRingKeys.PageOrder);
        await bed.WaitForBackendStateAsync(disk, XenbusState.Connected);
        frontend.SetState(XenbusState.Connected);

        await bed.Backend.StopAsync(CancellationToken.None).WaitAsync(BackendTestBed.Timeout);

        Assert.Equal(0, bed.Hypervisor.ActiveGrantMappings);
        Assert.Equal(0, bed.Disks.OpenHandles);
        AssertPortsUnbound(bed, frontend);
        Assert.Equal(XenbusState.Connected, bed.Toolstack.ReadBackendState(disk));

        await bed.RestartBackendAsync();

        await BackendTestBed.WaitUntilAsync(
            () => bed.Backend.FindDevice(guest.Id, FirstDevice)?.State == XenbusState.Connected, "the new instance re-attached");
        Assert.Equal(2, bed.Hypervisor.ActiveGrantMappings);
        Assert.Equal(1, bed.Disks.OpenHandles);
    }

    /// <summary>
    /// After the backend unbinds, each frontend port reverts to unbound-for-dom0 (evtchn_close), so
    /// a fresh dom0 handle can bind it again: the proof that the backend let go of its end.
    /// </summary>
    private static void AssertPortsUnbound(BackendTestBed bed, RawRingFrontend frontend)
    {
        using IEventChannels probe = bed.Hypervisor.Platform(bed.Hypervisor.Dom0).OpenEventChannels();
        for (int q = 0; q < frontend.QueueCount; q++)
        {
            uint local = probe.BindInterdomain(frontend.Attachment.Guest.Id, frontend.Port(q));
            probe.Unbind(local);
        }
    }
}
