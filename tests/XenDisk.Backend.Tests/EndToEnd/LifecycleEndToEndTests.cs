using XenDisk.Abi;
using XenDisk.Backend.ControlPlane;
using XenDisk.Backend.Tests.Harness;
using XenDisk.TestFrontend;
using XenDisk.Xen;
using XenDisk.Xen.Simulated;
using Xunit.Abstractions;

namespace XenDisk.Backend.Tests.EndToEnd;

/// <summary>
/// Device lifecycles with a blkfront-like frontend: resize, reconnect, detach, restart of the
/// backend, backend kinds and the script filter, and failures that must stay with their device.
/// </summary>
public sealed class LifecycleEndToEndTests(ITestOutputHelper output)
{
    private const int FirstDevice = 51712;
    private const int SecondDevice = 51728;

    [Fact]
    public async Task Online_resize_shows_the_frontend_the_new_size_and_the_new_sectors_carry_data()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment attachment = await bed.AttachReadyAsync(guest, FirstDevice, "disk", 1 << 20);
        await using BlockFrontend frontend = await FrontendHarness.ConnectAsync(bed, attachment);
        long oldEnd = (long)frontend.Sectors;
        Assert.Equal(BlkifStatus.Error, await frontend.WriteAsync(oldEnd, new byte[4096]).WaitAsync(BackendTestBed.Timeout));

        using IXenStore guestStore = guest.Platform.OpenXenStore();
        guestStore.Watch(attachment.BackendPath + "/" + BlkifKeys.State, "resize");
        using var timeout = new CancellationTokenSource(BackendTestBed.Timeout);
        await guestStore.ReadWatchAsync(timeout.Token);

        bed.Disks["disk"].Resize(2 << 20);
        Assert.True(await bed.Backend.ResizeAsync(guest.Id, FirstDevice).WaitAsync(BackendTestBed.Timeout));

        // What blkfront does on the state watch: re-read "sectors" while Connected.
        await guestStore.ReadWatchAsync(timeout.Token);
        Assert.Equal("Connected", bed.Toolstack.ReadBackendState(attachment).ToString());
        Assert.Equal(((2 << 20) / 512).ToString(System.Globalization.CultureInfo.InvariantCulture),
            guestStore.Read(XenStoreTransaction.None, attachment.BackendPath + "/" + BlkifKeys.Sectors));
        await FrontendHarness.WriteReadVerifyAsync(frontend, oldEnd, 64 * 1024, 7, new MemoryBlockDeviceView(bed.Disks["disk"]));
        await FrontendHarness.DisconnectCleanlyAsync(bed, frontend);
    }

    [Fact]
    public async Task A_grown_disk_reaches_the_frontend_through_the_periodic_size_check()
    {
        BackendOptions options = BackendTestBed.DefaultOptions with { SizeCheckInterval = TimeSpan.FromMilliseconds(20) };
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output, options);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment attachment = await bed.AttachReadyAsync(guest, FirstDevice, "disk", 1 << 20);
        await using BlockFrontend frontend = await FrontendHarness.ConnectAsync(bed, attachment);
        long oldEnd = (long)frontend.Sectors;

        using IXenStore guestStore = guest.Platform.OpenXenStore();
        guestStore.Watch(attachment.BackendPath + "/" + BlkifKeys.State, "resize");
        using var timeout = new CancellationTokenSource(BackendTestBed.Timeout);
        await guestStore.ReadWatchAsync(timeout.Token);
        string sectorsKey = attachment.BackendPath + "/" + BlkifKeys.Sectors;
        Assert.Equal("2048", guestStore.Read(XenStoreTransaction.None, sectorsKey));

        // What an lvextend does to a served LV: the disk grows under the backend, and nobody calls it.
        bed.Disks["disk"].Resize(3 << 20);
        await guestStore.ReadWatchAsync(timeout.Token);
        Assert.Equal("6144", guestStore.Read(XenStoreTransaction.None, sectorsKey));
        Assert.Equal("Connected", bed.Toolstack.ReadBackendState(attachment).ToString());
        await FrontendHarness.WriteReadVerifyAsync(frontend, oldEnd, 128 * 1024, 9, new MemoryBlockDeviceView(bed.Disks["disk"]));
        await FrontendHarness.DisconnectCleanlyAsync(bed, frontend);
    }

    [Fact]
    public async Task A_frontend_reconnects_and_finds_its_data()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment attachment = await bed.AttachReadyAsync(guest, FirstDevice, "disk", 2 << 20);
        await using BlockFrontend frontend = await FrontendHarness.ConnectAsync(bed, attachment, new FrontendOptions { Queues = 2, RingPageOrder = 1 });
        byte[] data = FrontendHarness.Pattern(3, 96 * 1024);
        Assert.Equal(BlkifStatus.Okay, await frontend.WriteAsync(100, data).WaitAsync(BackendTestBed.Timeout));

        await FrontendHarness.DisconnectCleanlyAsync(bed, frontend);
        Assert.Equal(XenbusState.Closed, bed.Toolstack.ReadBackendState(attachment));

        // Closed -> Initialising (frontend) -> InitWait (backend) -> Initialised -> Connected.
        await frontend.ConnectAsync().WaitAsync(BackendTestBed.Timeout);

        byte[] back = new byte[data.Length];
        Assert.Equal(BlkifStatus.Okay, await frontend.ReadAsync(100, back).WaitAsync(BackendTestBed.Timeout));
        Assert.Equal(data, back);
        Assert.Equal(1, bed.Disks.Opens);
        await FrontendHarness.DisconnectCleanlyAsync(bed, frontend);
    }

    [Fact]
    public async Task Detach_releases_every_mapping_and_forgets_the_device()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment attachment = await bed.AttachReadyAsync(guest, FirstDevice, "disk", 2 << 20);
        await using BlockFrontend frontend = await FrontendHarness.ConnectAsync(bed, attachment, new FrontendOptions { Queues = 2, RingPageOrder = 2 });
        await FrontendHarness.WriteReadVerifyAsync(frontend, 0, 256 * 1024, 5);
        Assert.True(bed.Hypervisor.ActiveGrantMappings > 0);

        await bed.Toolstack.DetachDiskAsync(attachment, BackendTestBed.Timeout);

        FrontendDisconnectResult result = await frontend.DisconnectAsync().WaitAsync(BackendTestBed.Timeout);
        Assert.Equal(0, result.RingGrantsStillMapped);
        Assert.Equal(0, result.DataGrantsStillMapped);
        Assert.Equal(0, bed.Hypervisor.ActiveGrantMappings);
        Assert.Contains(bed.Logs.WithEventId(1017), e => e.Message.Contains(attachment.BackendPath, StringComparison.Ordinal));
        await BackendTestBed.WaitUntilAsync(() => bed.Backend.Devices.Count == 0, "the device is forgotten");
        await BackendTestBed.WaitUntilAsync(() => bed.Disks.OpenHandles == 0, "the disk is closed");
    }

    [Fact]
    public async Task A_restarted_backend_picks_up_a_connected_frontend()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment attachment = await bed.AttachReadyAsync(guest, FirstDevice, "disk", 2 << 20);
        await using BlockFrontend frontend = await FrontendHarness.ConnectAsync(bed, attachment, new FrontendOptions { RingPageOrder = 1 });
        byte[] data = FrontendHarness.Pattern(9, 32 * 1024);
        Assert.Equal(BlkifStatus.Okay, await frontend.WriteAsync(40, data).WaitAsync(BackendTestBed.Timeout));

        await bed.RestartBackendAsync();
        await BackendTestBed.WaitUntilAsync(
            () => bed.Backend.FindDevice(guest.Id, FirstDevice)?.State == XenbusState.Connected, "the new instance re-attached to the rings");

        byte[] back = new byte[data.Length];
        Assert.Equal(BlkifStatus.Okay, await frontend.ReadAsync(40, back).WaitAsync(BackendTestBed.Timeout));
        Assert.Equal(data, back);
        await FrontendHarness.WriteReadVerifyAsync(frontend, 400, 8192, 10);
        await FrontendHarness.DisconnectCleanlyAsync(bed, frontend);
    }

    [Fact]
    public async Task DeviceConnected_announces_every_connection_with_its_running_rings_before_the_frontend_sees_Connected()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        var announced = new System.Collections.Concurrent.ConcurrentQueue<DeviceStatus>();
        bed.Backend.DeviceConnected += announced.Enqueue;
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment attachment = await bed.AttachReadyAsync(guest, FirstDevice, "disk", 2 << 20);
        await using BlockFrontend frontend = await FrontendHarness.ConnectAsync(bed, attachment, new FrontendOptions { Queues = 2 });

        DeviceStatus first = Assert.Single(announced);
        Assert.Equal(attachment.BackendPath, first.BackendPath);
        Assert.Equal(2, first.Queues.Count);
        Assert.All(first.Queues, q => Assert.Same(q.Ring, bed.Backend.FindDevice(guest.Id, FirstDevice)!.Queues[q.QueueIndex].Ring));

        // A new instance announces the rings it re-attached to.
        announced.Clear();
        await bed.RestartBackendAsync(backend => backend.DeviceConnected += announced.Enqueue);
        await BackendTestBed.WaitUntilAsync(
            () => bed.Backend.FindDevice(guest.Id, FirstDevice)?.State == XenbusState.Connected, "the new instance re-attached to the rings");
        DeviceStatus again = Assert.Single(announced);
        Assert.Equal(2, again.Queues.Count);
        await FrontendHarness.WriteReadVerifyAsync(frontend, 0, 8192, 3);
        await FrontendHarness.DisconnectCleanlyAsync(bed, frontend);
    }

    [Fact]
    public async Task Vbd3_and_the_script_filter_serve_only_their_devices()
    {
        BackendOptions options = BackendTestBed.DefaultOptions with { Kinds = ["vbd", "vbd3"], HotplugScriptFilter = "xendisk" };
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output, options);
        SimulatedDomain guest = bed.CreateGuest();
        bed.Disks.Add("ours-vbd3", 1 << 20);
        bed.Disks.Add("ours-vbd", 1 << 20);
        bed.Disks.Add("theirs", 1 << 20);
        DiskAttachment theirs = bed.Attach(guest, SecondDevice + 16, "theirs", script: "/etc/xen/scripts/block");
        DiskAttachment vbd3 = bed.Attach(guest, FirstDevice, "ours-vbd3", kind: "vbd3", script: "/etc/xen/scripts/xendisk");
        DiskAttachment vbd = bed.Attach(guest, SecondDevice, "ours-vbd", script: "xendisk");
        await bed.WaitForBackendStateAsync(vbd3, XenbusState.InitWait);
        await bed.WaitForBackendStateAsync(vbd, XenbusState.InitWait);

        await using BlockFrontend first = await FrontendHarness.ConnectAsync(bed, vbd3);
        await using BlockFrontend second = await FrontendHarness.ConnectAsync(bed, vbd);
        await FrontendHarness.WriteReadVerifyAsync(first, 0, 16384, 1, new MemoryBlockDeviceView(bed.Disks["ours-vbd3"]));
        await FrontendHarness.WriteReadVerifyAsync(second, 0, 16384, 2, new MemoryBlockDeviceView(bed.Disks["ours-vbd"]));

        await BackendTestBed.WaitUntilAsync(() => bed.Logs.WithEventId(1003).Any(), "the foreign device was looked at");
        Assert.Equal(XenbusState.Initialising, bed.Toolstack.ReadBackendState(theirs));
        Assert.Equal(["vbd", "vbd3"], bed.Backend.Devices.Select(d => d.Kind).Order());
        await FrontendHarness.DisconnectCleanlyAsync(bed, first, otherDevicesConnected: true);
        await FrontendHarness.DisconnectCleanlyAsync(bed, second);
    }

    public static TheoryData<string, string> ToolstackFaults => new()
    {
        { "params-missing", "missing \"params\"" },
        { "bad-frontend-id", "bad \"frontend-id\"" },
        { "no-such-disk", "cannot open disk" },
    };

    [Theory]
    [MemberData(nameof(ToolstackFaults))]
    public async Task A_badly_configured_device_is_closed_while_another_keeps_serving(string fault, string expectedError)
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment healthy = await bed.AttachReadyAsync(guest, SecondDevice, "healthy", 4 << 20);
        await using BlockFrontend serving = await FrontendHarness.ConnectAsync(bed, healthy, new FrontendOptions { Queues = 2 });
        Task verifying = VerifyRepeatedlyAsync(serving, rounds: 20);

        bed.Disks.Add("bad", 1 << 20);
        DiskAttachment bad = fault switch
        {
            "params-missing" => bed.AttachWithKeys(guest, FirstDevice, "bad", new Dictionary<string, string?> { [BlkifKeys.Params] = null }),
            "bad-frontend-id" => bed.AttachWithKeys(guest, FirstDevice, "bad", new Dictionary<string, string?> { [BlkifKeys.FrontendId] = "not-a-domain" }),
            _ => bed.Attach(guest, FirstDevice, "missing"),
        };

        await WaitForErrorAsync(bed, bad, expectedError);
        await verifying.WaitAsync(BackendTestBed.Timeout);
        Assert.Equal(XenbusState.Connected, bed.Toolstack.ReadBackendState(healthy));
        await FrontendHarness.DisconnectCleanlyAsync(bed, serving);
    }

    public static TheoryData<int?, int?, string> FrontendFaults => new()
    {
        { 8, null, "8 queues" },
        { null, 3, "ring-page-order 3" },
    };

    [Theory]
    [MemberData(nameof(FrontendFaults))]
    public async Task A_frontend_asking_too_much_is_refused_while_another_keeps_serving(int? queues, int? order, string expectedError)
    {
        BackendOptions options = BackendTestBed.DefaultOptions with { MaxQueues = 4, MaxRingPageOrder = 2 };
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output, options);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment healthy = await bed.AttachReadyAsync(guest, SecondDevice, "healthy", 4 << 20);
        DiskAttachment greedy = await bed.AttachReadyAsync(guest, FirstDevice, "greedy", 1 << 20);
        await using BlockFrontend serving = await FrontendHarness.ConnectAsync(bed, healthy);
        Task verifying = VerifyRepeatedlyAsync(serving, rounds: 20);

        await using var greedyFrontend = new BlockFrontend(bed.Hypervisor, guest, greedy,
            FrontendHarness.Options(new FrontendOptions { ForceQueueCount = queues, ForceRingPageOrder = order }) with { StateTimeout = TimeSpan.FromSeconds(1) });
        Task connecting = greedyFrontend.ConnectAsync();

        await WaitForErrorAsync(bed, greedy, expectedError);
        await Assert.ThrowsAsync<TimeoutException>(() => connecting.WaitAsync(BackendTestBed.Timeout));
        await verifying.WaitAsync(BackendTestBed.Timeout);
        Assert.Equal(XenbusState.Connected, bed.Toolstack.ReadBackendState(healthy));
        await FrontendHarness.DisconnectCleanlyAsync(bed, serving);
    }

    private static async Task WaitForErrorAsync(BackendTestBed bed, DiskAttachment attachment, string expectedError)
    {
        await bed.WaitForBackendStateAsync(attachment, XenbusState.Closed);
        string? error = bed.ReadBackend(attachment, BlkifKeys.Error);
        Assert.NotNull(error);
        Assert.Contains(expectedError, error, StringComparison.Ordinal);
    }

    /// <summary>Write, read back and compare, <paramref name="rounds"/> times over distinct blocks.</summary>
    private static async Task VerifyRepeatedlyAsync(BlockFrontend frontend, int rounds)
    {
        for (int i = 0; i < rounds; i++)
        {
            await FrontendHarness.WriteReadVerifyAsync(frontend, i * 64L, 16 * 1024, 1000 + i);
        }
    }
}
