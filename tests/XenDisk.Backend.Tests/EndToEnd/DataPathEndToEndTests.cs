using XenDisk.Abi;
using XenDisk.Backend.ControlPlane;
using XenDisk.Backend.Tests.Harness;
using XenDisk.TestFrontend;
using XenDisk.Xen.Simulated;
using Xunit.Abstractions;

namespace XenDisk.Backend.Tests.EndToEnd;

/// <summary>
/// A blkfront-like frontend against the whole backend (control plane + data plane) on the
/// simulated hypervisor: every negotiated shape carries data that reads back as written.
/// </summary>
public sealed class DataPathEndToEndTests(ITestOutputHelper output)
{
    private const int Device = 51712;
    private const long DiskBytes = 8 << 20;

    public static TheoryData<int, int, RingKeySpelling, BlkifProtocol, bool, bool> Shapes => new()
    {
        // queues, ring order, spelling, protocol, persistent grants, indirect
        { 1, 0, RingKeySpelling.RingPageOrder, BlkifProtocol.X86_64, true, true },
        { 2, 2, RingKeySpelling.RingPageOrder, BlkifProtocol.X86_64, true, true },
        { 1, 3, RingKeySpelling.NumRingPages, BlkifProtocol.X86_64, false, false },
        { 4, 4, RingKeySpelling.RingPageOrder, BlkifProtocol.X86_32, true, true },
        { 1, 1, RingKeySpelling.NumRingPages, BlkifProtocol.X86_32, false, true },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public async Task Written_data_reads_back_over_every_ring_shape(int queues, int order, RingKeySpelling spelling, BlkifProtocol protocol, bool persistent, bool indirect)
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment attachment = await bed.AttachReadyAsync(guest, Device, "disk", DiskBytes);
        var disk = new MemoryBlockDeviceView(bed.Disks["disk"]);
        var options = new FrontendOptions
        {
            Queues = queues,
            RingPageOrder = order,
            RingKeySpelling = spelling,
            Protocol = protocol,
            UsePersistentGrants = persistent,
            UseIndirect = indirect,
            MaxIndirectSegments = 64,
        };

        await using BlockFrontend frontend = await FrontendHarness.ConnectAsync(bed, attachment, options);

        NegotiatedFrontendFeatures negotiated = frontend.NegotiatedFrontendFeatures;
        Assert.Equal(queues, negotiated.Queues);
        Assert.Equal(order, negotiated.RingPageOrder);
        Assert.Equal(persistent, negotiated.PersistentGrants);
        Assert.Equal(indirect ? 64 : 0, negotiated.IndirectSegments);
        Assert.Equal((ulong)DiskBytes / 512, frontend.Sectors);
        DeviceStatus status = Assert.Single(bed.Backend.Devices);
        Assert.Equal(protocol, status.Protocol);
        Assert.Equal(queues, status.Queues.Count);
        Assert.Equal(persistent, status.Features!.PersistentGrants);

        // Small, page-straddling, multi-request (beyond 11 segments) and last-sector transfers, on every queue.
        int seed = 1;
        for (int q = 0; q < queues; q++)
        {
            await FrontendHarness.WriteReadVerifyAsync(frontend, 8 + (q * 2048), 512, seed++, disk, q);
            await FrontendHarness.WriteReadVerifyAsync(frontend, 17 + (q * 2048), 12 * 1024, seed++, disk, q);
            await FrontendHarness.WriteReadVerifyAsync(frontend, 256 + (q * 2048), 256 * 1024, seed++, disk, q);
        }

        await FrontendHarness.WriteReadVerifyAsync(frontend, (DiskBytes / 512) - 8, 4096, seed, disk);

        long totalRequests = status.Queues.Sum(s => s.Ring.Statistics.Requests(XenDisk.Backend.DataPlane.RingOperation.Write));
        Assert.True(totalRequests >= queues * 3, $"only {totalRequests} writes were counted");
        if (persistent)
        {
            Assert.True(status.Queues.Sum(s => s.Ring.Statistics.PersistentGrantHits + s.Ring.Statistics.PersistentGrantMisses) > 0);
        }

        await FrontendHarness.DisconnectCleanlyAsync(bed, frontend);
        await bed.WaitForBackendStateAsync(attachment, XenbusState.Closed);
    }

    [Fact]
    public async Task Io_beyond_the_end_of_the_disk_is_an_error()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        DiskAttachment attachment = await bed.AttachReadyAsync(bed.CreateGuest(), Device, "disk", 1 << 20);
        await using BlockFrontend frontend = await FrontendHarness.ConnectAsync(bed, attachment);

        short status = await frontend.WriteAsync((long)frontend.Sectors - 4, new byte[4096]).WaitAsync(BackendTestBed.Timeout);

        Assert.Equal(BlkifStatus.Error, status);
        await FrontendHarness.DisconnectCleanlyAsync(bed, frontend);
    }

    [Fact]
    public async Task Four_KiB_logical_sectors_carry_data()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        DiskAttachment attachment = await bed.AttachReadyAsync(bed.CreateGuest(), Device, "disk", 2 << 20, logicalSectorSize: 4096);
        var disk = new MemoryBlockDeviceView(bed.Disks["disk"]);
        await using BlockFrontend frontend = await FrontendHarness.ConnectAsync(bed, attachment);

        Assert.Equal(4096u, frontend.SectorSize);
        Assert.Equal(4096u, frontend.NegotiatedFrontendFeatures.PhysicalSectorSize);
        Assert.Equal((ulong)(2 << 20) / 512, frontend.Sectors);
        await FrontendHarness.WriteReadVerifyAsync(frontend, 8, 4096, 11, disk);
        await FrontendHarness.WriteReadVerifyAsync(frontend, 64, 128 * 1024, 12, disk);

        await FrontendHarness.DisconnectCleanlyAsync(bed, frontend);
    }

    [Fact]
    public async Task A_read_only_disk_refuses_writes_and_serves_reads()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        SimulatedDomain guest = bed.CreateGuest();
        DiskAttachment attachment = await bed.AttachReadyAsync(guest, Device, "disk", 1 << 20, readOnly: true);
        byte[] original = FrontendHarness.Pattern(21, 8192);
        original.CopyTo(bed.Disks["disk"].Contents[4096..]);
        await using BlockFrontend frontend = await FrontendHarness.ConnectAsync(bed, attachment);

        Assert.True(frontend.Info.HasFlag(VdiskInfo.ReadOnly));
        short written = await frontend.WriteAsync(8, FrontendHarness.Pattern(22, 8192)).WaitAsync(BackendTestBed.Timeout);
        short discarded = await frontend.DiscardAsync(8, 16).WaitAsync(BackendTestBed.Timeout);
        byte[] back = new byte[8192];
        short read = await frontend.ReadAsync(8, back).WaitAsync(BackendTestBed.Timeout);

        Assert.Equal(BlkifStatus.Error, written);
        Assert.NotEqual(BlkifStatus.Okay, discarded);
        Assert.Equal(BlkifStatus.Okay, read);
        Assert.Equal(original, back);
        Assert.True(bed.Disks["disk"].Contents.Slice(4096, 8192).SequenceEqual(original));
        Assert.False(frontend.NegotiatedFrontendFeatures.Discard);
        await FrontendHarness.DisconnectCleanlyAsync(bed, frontend);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Discarded_sectors_read_as_zeros(bool secure)
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        DiskAttachment attachment = await bed.AttachReadyAsync(bed.CreateGuest(), Device, "disk", 1 << 20);
        await using BlockFrontend frontend = await FrontendHarness.ConnectAsync(bed, attachment);
        NegotiatedFrontendFeatures negotiated = frontend.NegotiatedFrontendFeatures;
        Assert.True(negotiated.Discard);
        Assert.True(negotiated.DiscardSecure);
        Assert.Equal(512u, negotiated.DiscardGranularity);

        await FrontendHarness.WriteReadVerifyAsync(frontend, 0, 64 * 1024, 31);
        Assert.Equal(BlkifStatus.Okay, await frontend.DiscardAsync(16, 32, secure).WaitAsync(BackendTestBed.Timeout));

        byte[] back = new byte[64 * 1024];
        Assert.Equal(BlkifStatus.Okay, await frontend.ReadAsync(0, back).WaitAsync(BackendTestBed.Timeout));
        byte[] expected = FrontendHarness.Pattern(31, 64 * 1024);
        expected.AsSpan(16 * 512, 32 * 512).Clear();
        Assert.Equal(expected, back);
        await FrontendHarness.DisconnectCleanlyAsync(bed, frontend);
    }

    [Fact]
    public async Task Flush_and_barrier_succeed_and_keep_the_data()
    {
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);
        DiskAttachment attachment = await bed.AttachReadyAsync(bed.CreateGuest(), Device, "disk", 1 << 20);
        var disk = new MemoryBlockDeviceView(bed.Disks["disk"]);
        await using BlockFrontend frontend = await FrontendHarness.ConnectAsync(bed, attachment);
        Assert.True(frontend.NegotiatedFrontendFeatures.FlushCache);
        Assert.True(frontend.NegotiatedFrontendFeatures.Barrier);

        await FrontendHarness.WriteReadVerifyAsync(frontend, 0, 8192, 41, disk);
        Assert.Equal(BlkifStatus.Okay, await frontend.FlushAsync().WaitAsync(BackendTestBed.Timeout));
        byte[] barrier = FrontendHarness.Pattern(42, 4096);
        Assert.Equal(BlkifStatus.Okay, await frontend.WriteBarrierAsync(64, barrier).WaitAsync(BackendTestBed.Timeout));

        Assert.True(disk.Slice(64 * 512, 4096).SequenceEqual(barrier));
        long flushes = Assert.Single(bed.Backend.Devices).Queues.Sum(q => q.Ring.Statistics.Requests(XenDisk.Backend.DataPlane.RingOperation.Flush));
        Assert.True(flushes >= 1);
        await FrontendHarness.DisconnectCleanlyAsync(bed, frontend);
    }

    [Fact]
    public async Task Indirect_requests_carry_the_largest_negotiated_transfers()
    {
        BackendOptions options = BackendTestBed.DefaultOptions with { MaxIndirectSegments = 256 };
        await using BackendTestBed bed = await BackendTestBed.StartAsync(output, options);
        DiskAttachment attachment = await bed.AttachReadyAsync(bed.CreateGuest(), Device, "disk", DiskBytes);
        var disk = new MemoryBlockDeviceView(bed.Disks["disk"]);
        await using BlockFrontend frontend = await FrontendHarness.ConnectAsync(bed, attachment, new FrontendOptions { MaxIndirectSegments = 256 });

        Assert.Equal(256, frontend.NegotiatedFrontendFeatures.IndirectSegments);
        Assert.Equal(256, frontend.NegotiatedFrontendFeatures.BackendMaxIndirectSegments);

        // One request of 256 pages (1 MiB), and one that needs two.
        await FrontendHarness.WriteReadVerifyAsync(frontend, 2048, 1 << 20, 51, disk);
        await FrontendHarness.WriteReadVerifyAsync(frontend, 8, (1 << 20) + 4096, 52, disk);
        await FrontendHarness.DisconnectCleanlyAsync(bed, frontend);
    }
}
