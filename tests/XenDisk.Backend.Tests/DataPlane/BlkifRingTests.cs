using System.Buffers.Binary;
using XenDisk.Abi;
using XenDisk.Backend.DataPlane;
using XenDisk.Backend.Tests.DataPlane.Harness;
using XenDisk.Storage;
using XenDisk.Xen.Simulated;

namespace XenDisk.Backend.Tests.DataPlane;

/// <summary>BlkifRing against the simulated hypervisor, with the test playing a blkfront that writes raw slots.</summary>
public class BlkifRingTests
{
    private const long DiskBytes = 4 << 20;
    private const byte R = BlkifOperation.Read;
    private const byte W = BlkifOperation.Write;

    private static byte[] Pattern(int length, int seed)
    {
        byte[] data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    /// <summary>Segment i over page i with the given sector ranges.</summary>
    private static Seg[] Segments(GuestBuffers pages, params (byte First, byte Last)[] ranges) =>
        [.. ranges.Select((r, i) => new Seg(pages.Ref(i), r.First, r.Last))];

    private static int Bytes(Seg[] segments) => segments.Sum(s => (s.Last - s.First + 1) * 512);

    private static void Scatter(GuestBuffers pages, Seg[] segments, ReadOnlySpan<byte> data)
    {
        int at = 0;
        for (int i = 0; i < segments.Length; i++)
        {
            int length = (segments[i].Last - segments[i].First + 1) * 512;
            data.Slice(at, length).CopyTo(pages.Page(i)[(segments[i].First * 512)..]);
            at += length;
        }
    }

    private static byte[] Gather(GuestBuffers pages, Seg[] segments)
    {
        byte[] data = new byte[Bytes(segments)];
        int at = 0;
        for (int i = 0; i < segments.Length; i++)
        {
            int length = (segments[i].Last - segments[i].First + 1) * 512;
            pages.Page(i).Slice(segments[i].First * 512, length).CopyTo(data.AsSpan(at));
            at += length;
        }

        return data;
    }

    private static void AssertOk(WireSlots.Response response, ulong id, byte operation)
    {
        Assert.Equal(id, response.Id);
        Assert.Equal(operation, response.Operation);
        Assert.Equal(BlkifStatus.Okay, response.Status);
    }

    private static void AssertStatus(WireSlots.Response response, ulong id, byte operation, short status)
    {
        Assert.Equal(id, response.Id);
        Assert.Equal(operation, response.Operation);
        Assert.Equal(status, response.Status);
    }

    public static TheoryData<BlkifProtocol, DataPath, bool> Paths()
    {
        var data = new TheoryData<BlkifProtocol, DataPath, bool>();
        foreach (BlkifProtocol protocol in (BlkifProtocol[])[BlkifProtocol.X86_64, BlkifProtocol.X86_32])
        {
            foreach (DataPath path in (DataPath[])[DataPath.GrantMap, DataPath.GrantCopy])
            {
                data.Add(protocol, path, true);
                data.Add(protocol, path, false);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public async Task Data_written_with_partial_segments_reads_back_equal(BlkifProtocol protocol, DataPath path, bool inline)
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        using var queued = new QueuedTestDevice(memory);
        var connection = new RingConnection(hypervisor, guest, inline ? memory : queued, protocol,
            options: new DataPlaneOptions { DataPath = path, IoThreadsPerRing = 2 }).Start();

        const ulong sector = 40;
        byte[] data = Pattern(18 * 512, 1);
        using (var pages = new GuestBuffers(guest, 3, readOnly: true))
        {
            Seg[] segments = Segments(pages, (2, 7), (0, 7), (0, 3));
            Scatter(pages, segments, data);
            AssertOk(connection.SubmitOne(WireSlots.ReadWrite(protocol, W, 0x1111_2222_3333_4444, sector, segments)), 0x1111_2222_3333_4444, W);
        }

        Assert.Equal(data, memory.Contents.Slice((int)sector * 512, data.Length).ToArray());

        using (var pages = new GuestBuffers(guest, 3, readOnly: false))
        {
            for (int i = 0; i < 3; i++)
            {
                pages.Page(i).Fill(0x5C);
            }

            Seg[] segments = Segments(pages, (1, 7), (0, 7), (5, 7));
            AssertOk(connection.SubmitOne(WireSlots.ReadWrite(protocol, R, 0x5555_6666_7777_8888, sector, segments)), 0x5555_6666_7777_8888, R);
            Assert.Equal(data, Gather(pages, segments));

            // Bytes outside the segments are untouched.
            Assert.True(pages.Page(0)[..512].ToArray().All(b => b == 0x5C));
            Assert.True(pages.Page(2)[..(5 * 512)].ToArray().All(b => b == 0x5C));
            Assert.Equal(0, connection.DataPagesMapped);
            Assert.True(pages.TryRelease());
        }

        Assert.Equal(1, connection.Statistics.Requests(RingOperation.Write));
        Assert.Equal(1, connection.Statistics.Requests(RingOperation.Read));
        Assert.Equal(data.Length, connection.Statistics.Bytes(RingOperation.Read));
        Assert.Equal(data.Length, connection.Statistics.Bytes(RingOperation.Write));
        Assert.Equal(1, connection.Statistics.Latency(RingOperation.Read).Count);
        if (path == DataPath.GrantCopy)
        {
            Assert.Equal(0, connection.Statistics.GrantMaps);
            Assert.Equal(6, connection.Statistics.GrantCopySegments);
        }
        else
        {
            Assert.Equal(2, connection.Statistics.GrantMaps);
            Assert.Equal(2, connection.Statistics.GrantUnmaps);
        }

        await connection.DisposeAsync();
        Assert.Equal(0, hypervisor.ActiveGrantMappings);
    }

    [Theory]
    [InlineData(DataPath.GrantMap, true)]
    [InlineData(DataPath.GrantMap, false)]
    [InlineData(DataPath.GrantCopy, false)]
    public async Task Many_requests_in_flight_all_complete_with_their_own_data(DataPath path, bool inline)
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        using var queued = new QueuedTestDevice(memory);
        await using var connection = new RingConnection(hypervisor, guest, inline ? memory : queued,
            options: new DataPlaneOptions { DataPath = path, IoThreadsPerRing = 4, MaxBatch = 5 }).Start();

        const int requests = 32; // the whole ring
        var writes = new List<GuestBuffers>();
        var slots = new List<byte[]>();
        for (int i = 0; i < requests; i++)
        {
            var pages = new GuestBuffers(guest, 2, readOnly: true);
            pages.Page(0).Fill((byte)i);
            pages.Page(1).Fill((byte)(i + 100));
            writes.Add(pages);
            slots.Add(WireSlots.ReadWrite(BlkifProtocol.X86_64, W, (ulong)i, (ulong)i * 16, pages.FullSegments()));
        }

        WireSlots.Response[] responses = connection.Submit([.. slots]);
        Assert.Equal(Enumerable.Range(0, requests).Select(i => (ulong)i), responses.Select(r => r.Id).Order());
        Assert.All(responses, r => Assert.Equal(BlkifStatus.Okay, r.Status));
        writes.ForEach(w => w.Dispose());

        for (int i = 0; i < requests; i++)
        {
            Assert.True(memory.Contents.Slice(i * 16 * 512, 4096).ToArray().All(b => b == (byte)i));
            Assert.True(memory.Contents.Slice((i * 16 * 512) + 4096, 4096).ToArray().All(b => b == (byte)(i + 100)));
        }

        // MaxBatch bounds each batch: 32 requests cannot have been taken in fewer than 7 batches.
        Assert.True(connection.Statistics.Batches >= 7, $"{connection.Statistics.Batches} batches");
        Assert.Equal(0, connection.Statistics.InFlight);
    }

    [Fact]
    public async Task Flush_without_data_is_answered_after_earlier_writes_complete()
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        using var device = new QueuedTestDevice(memory);
        await using var connection = new RingConnection(hypervisor, guest, device, options: new DataPlaneOptions { IoThreadsPerRing = 4 }).Start();
        using var pages = new GuestBuffers(guest, 2, readOnly: true);

        device.Hold();
        connection.Queue(WireSlots.ReadWrite(BlkifProtocol.X86_64, W, 1, 0, [new(pages.Ref(0), 0, 7)]));
        connection.Queue(WireSlots.ReadWrite(BlkifProtocol.X86_64, W, 2, 8, [new(pages.Ref(1), 0, 7)]));
        connection.Queue(WireSlots.ReadWrite(BlkifProtocol.X86_64, BlkifOperation.FlushDiskCache, 3, 0, []));
        connection.Publish();
        RingConnection.WaitUntil(() => device.Entered == 2, "both writes to reach the device");
        device.Release();

        WireSlots.Response[] responses = connection.WaitForResponses(3);
        Assert.All(responses, r => Assert.Equal(BlkifStatus.Okay, r.Status));
        AssertOk(responses[2], 3, BlkifOperation.FlushDiskCache);
        Assert.Equal("flush", device.Completed[2]);
        Assert.Equal(1, connection.Statistics.Requests(RingOperation.Flush));
    }

    [Theory]
    [InlineData(BlkifOperation.WriteBarrier)]
    [InlineData(BlkifOperation.FlushDiskCache)]
    public async Task Barrier_and_flush_with_data_drain_flush_write_flush_and_hold_later_requests(byte operation)
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        using var device = new QueuedTestDevice(memory);
        await using var connection = new RingConnection(hypervisor, guest, device, options: new DataPlaneOptions { IoThreadsPerRing = 4 }).Start();
        using var pages = new GuestBuffers(guest, 3, readOnly: true);
        pages.Page(1).Fill(0x42);

        device.Hold();
        connection.Queue(WireSlots.ReadWrite(BlkifProtocol.X86_64, W, 1, 0, [new(pages.Ref(0), 0, 7)]));
        connection.Queue(WireSlots.ReadWrite(BlkifProtocol.X86_64, operation, 2, 8, [new(pages.Ref(1), 0, 7)]));
        connection.Queue(WireSlots.ReadWrite(BlkifProtocol.X86_64, W, 3, 16, [new(pages.Ref(2), 0, 7)]));
        connection.Publish();
        RingConnection.WaitUntil(() => device.Entered == 1, "the first write to reach the device");
        device.Release();

        WireSlots.Response[] responses = connection.WaitForResponses(3);
        Assert.Equal([1UL, 2UL, 3UL], responses.Select(r => r.Id));
        Assert.All(responses, r => Assert.Equal(BlkifStatus.Okay, r.Status));
        Assert.Equal(["write 0", "flush", "write 4096", "flush", "write 8192"], device.Completed);
        Assert.True(memory.Contents.Slice(4096, 4096).ToArray().All(b => b == 0x42));
    }

    [Fact]
    public async Task Discard_zeroes_the_range_and_secure_discard_needs_negotiation()
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        memory.Contents.Fill(0x77);
        await using var connection = new RingConnection(hypervisor, guest, memory, features: new NegotiatedFeatures { Discard = true, SecureDiscard = false }).Start();

        AssertOk(connection.SubmitOne(WireSlots.Discard(BlkifProtocol.X86_64, 9, 16, 24)), 9, BlkifOperation.Discard);
        Assert.True(memory.Contents.Slice(16 * 512, 24 * 512).ToArray().All(b => b == 0));
        Assert.Equal(0x77, memory.Contents[(16 * 512) - 1]);
        Assert.Equal(0x77, memory.Contents[40 * 512]);

        AssertStatus(connection.SubmitOne(WireSlots.Discard(BlkifProtocol.X86_64, 10, 64, 8, BlkifLimits.DiscardSecure)), 10, BlkifOperation.Discard, BlkifStatus.EOpNotSupp);
        Assert.Equal(0x77, memory.Contents[64 * 512]);

        AssertStatus(connection.SubmitOne(WireSlots.Discard(BlkifProtocol.X86_64, 11, (DiskBytes / 512) - 8, 16)), 11, BlkifOperation.Discard, BlkifStatus.Error);
        Assert.Equal(24 * 512, connection.Statistics.Bytes(RingOperation.Discard));
        Assert.Equal(1, connection.Statistics.Unsupported);
        Assert.Equal(1, connection.Statistics.GuestErrors);
    }

    [Fact]
    public async Task Secure_discard_runs_when_negotiated()
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        using var device = new QueuedTestDevice(memory);
        memory.Contents.Fill(0x77);
        await using var connection = new RingConnection(hypervisor, guest, device, features: new NegotiatedFeatures { Discard = true, SecureDiscard = true }).Start();

        AssertOk(connection.SubmitOne(WireSlots.Discard(BlkifProtocol.X86_64, 10, 64, 8, BlkifLimits.DiscardSecure)), 10, BlkifOperation.Discard);
        Assert.Equal(["discard 32768 4096 secure"], device.Completed);
        Assert.Equal(0, memory.Contents[64 * 512]);
    }

    [Theory]
    [InlineData(BlkifProtocol.X86_64, 256, 256, 1)]
    [InlineData(BlkifProtocol.X86_32, 100, 256, 1)]
    [InlineData(BlkifProtocol.X86_64, 1024, 1024, 2)]
    [InlineData(BlkifProtocol.X86_32, 700, 1024, 2)]
    public async Task Indirect_requests_move_every_segment(BlkifProtocol protocol, int segmentCount, int negotiated, int expectedPages)
    {
        foreach (DataPath path in (DataPath[])[DataPath.GrantMap, DataPath.GrantCopy])
        {
            using var hypervisor = new SimulatedHypervisor();
            SimulatedDomain guest = hypervisor.CreateDomain("guest", memoryPages: 4096);
            using var memory = new MemoryBlockDevice(8 << 20);
            await using var connection = new RingConnection(hypervisor, guest, memory, protocol,
                features: new NegotiatedFeatures { MaxIndirectSegments = negotiated },
                options: new DataPlaneOptions { DataPath = path }).Start();

            int indirectPages = (segmentCount + 511) / 512;
            Assert.Equal(expectedPages, indirectPages);
            using var segmentPages = new GuestBuffers(guest, indirectPages, readOnly: true);
            uint[] indirectRefs = [.. Enumerable.Range(0, indirectPages).Select(segmentPages.Ref)];
            byte[] data = Pattern(segmentCount * 4096, segmentCount);

            using (var pages = new GuestBuffers(guest, segmentCount, readOnly: true))
            {
                Seg[] segments = pages.FullSegments();
                Scatter(pages, segments, data);
                WriteIndirectPages(segmentPages, segments);
                AssertOk(connection.SubmitOne(WireSlots.Indirect(protocol, W, 0xABCDEF, 8, segmentCount, indirectRefs)), 0xABCDEF, W);
            }

            Assert.Equal(data, memory.Contents.Slice(4096, data.Length).ToArray());

            using (var pages = new GuestBuffers(guest, segmentCount, readOnly: false))
            {
                Seg[] segments = pages.FullSegments();
                WriteIndirectPages(segmentPages, segments);
                AssertOk(connection.SubmitOne(WireSlots.Indirect(protocol, R, 0xFEDCBA, 8, segmentCount, indirectRefs)), 0xFEDCBA, R);
                Assert.Equal(data, Gather(pages, segments));
            }

            Assert.Equal(0, connection.DataPagesMapped);
        }
    }

    private static void WriteIndirectPages(GuestBuffers segmentPages, Seg[] segments)
    {
        for (int page = 0; page < segmentPages.Count; page++)
        {
            int first = page * 512;
            int count = Math.Min(512, segments.Length - first);
            segmentPages.Page(page).Clear();
            WireSlots.WriteIndirectSegments(segmentPages.Page(page), segments.AsSpan(first, count));
        }
    }

    [Fact]
    public async Task Indirect_request_with_a_bad_segment_in_its_pages_is_refused()
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        memory.Contents.Fill(0x33);
        await using var connection = new RingConnection(hypervisor, guest, memory).Start();
        using var segmentPages = new GuestBuffers(guest, 1, readOnly: true);
        using var pages = new GuestBuffers(guest, 20, readOnly: true);
        Seg[] segments = pages.FullSegments();
        segments[13] = segments[13] with { Last = 9 };
        WriteIndirectPages(segmentPages, segments);

        AssertStatus(connection.SubmitOne(WireSlots.Indirect(BlkifProtocol.X86_64, W, 5, 0, 20, [segmentPages.Ref(0)])), 5, W, BlkifStatus.Error);
        AssertStatus(connection.SubmitOne(WireSlots.Indirect(BlkifProtocol.X86_64, W, 6, 0, 20, [999_999])), 6, W, BlkifStatus.Error);
        Assert.True(memory.Contents[..(20 * 4096)].ToArray().All(b => b == 0x33));
        Assert.Equal(0, connection.DataPagesMapped);
    }

    [Theory]
    [InlineData(BlkifProtocol.X86_64)]
    [InlineData(BlkifProtocol.X86_32)]
    public async Task A_4096_byte_sector_disk_takes_whole_blocks_and_refuses_partial_ones(BlkifProtocol protocol)
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes, logicalSectorSize: 4096);
        memory.Contents.Fill(0x11);
        await using var connection = new RingConnection(hypervisor, guest, memory, protocol).Start();
        byte[] data = Pattern(3 * 4096, 4);

        using (var pages = new GuestBuffers(guest, 3, readOnly: true))
        {
            Scatter(pages, pages.FullSegments(), data);
            AssertOk(connection.SubmitOne(WireSlots.ReadWrite(protocol, W, 1, 64, pages.FullSegments())), 1, W);
            AssertStatus(connection.SubmitOne(WireSlots.ReadWrite(protocol, W, 2, 65, pages.FullSegments())), 2, W, BlkifStatus.Error);
            AssertStatus(connection.SubmitOne(WireSlots.ReadWrite(protocol, W, 3, 0, Segments(pages, (0, 7), (0, 3)))), 3, W, BlkifStatus.Error);
            AssertStatus(connection.SubmitOne(WireSlots.Discard(protocol, 4, 8, 4)), 4, BlkifOperation.Discard, BlkifStatus.Error);
        }

        Assert.Equal(data, memory.Contents.Slice(64 * 512, data.Length).ToArray());
        Assert.Equal(0x11, memory.Contents[0]);
        Assert.Equal(0x11, memory.Contents[8 * 512]);

        using (var pages = new GuestBuffers(guest, 3, readOnly: false))
        {
            AssertOk(connection.SubmitOne(WireSlots.ReadWrite(protocol, R, 5, 64, pages.FullSegments())), 5, R);
            Assert.Equal(data, Gather(pages, pages.FullSegments()));
        }
    }

    [Fact]
    public async Task A_read_only_disk_refuses_writes_barriers_and_discards_but_serves_reads()
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        memory.Contents.Fill(0x99);
        await using var connection = new RingConnection(hypervisor, guest, memory,
            features: new NegotiatedFeatures { ReadOnly = true, Discard = true, MaxIndirectSegments = 256 }).Start();

        using (var pages = new GuestBuffers(guest, 1, readOnly: true))
        {
            pages.Page(0).Clear();
            AssertStatus(connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, W, 1, 0, pages.FullSegments())), 1, W, BlkifStatus.Error);
            AssertStatus(connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, BlkifOperation.WriteBarrier, 2, 0, pages.FullSegments())), 2, BlkifOperation.WriteBarrier, BlkifStatus.Error);
            AssertStatus(connection.SubmitOne(WireSlots.Discard(BlkifProtocol.X86_64, 3, 0, 8)), 3, BlkifOperation.Discard, BlkifStatus.Error);
            AssertOk(connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, BlkifOperation.FlushDiskCache, 4, 0, [])), 4, BlkifOperation.FlushDiskCache);
        }

        Assert.True(memory.Contents[..4096].ToArray().All(b => b == 0x99));
        using (var pages = new GuestBuffers(guest, 1, readOnly: false))
        {
            AssertOk(connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, 5, 0, pages.FullSegments())), 5, R);
            Assert.True(pages.Page(0).ToArray().All(b => b == 0x99));
        }

        Assert.Equal(3, connection.Statistics.GuestErrors);
    }

    [Fact]
    public async Task Persistent_grants_are_reused_bounded_and_all_unmapped_at_stop()
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        var connection = new RingConnection(hypervisor, guest, memory,
            features: new NegotiatedFeatures { PersistentGrants = true, MaxIndirectSegments = 256 },
            options: new DataPlaneOptions { PersistentGrantCacheSize = 4 }).Start();

        // blkfront with persistent grants keeps a pool of pages granted read-write and reuses them.
        using var pool = new GuestBuffers(guest, 8, readOnly: false);
        for (int round = 0; round < 5; round++)
        {
            pool.Page(0).Fill((byte)round);
            pool.Page(1).Fill((byte)(round + 50));
            AssertOk(connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, W, 1, 0, [new(pool.Ref(0), 0, 7), new(pool.Ref(1), 0, 7)])), 1, W);
            pool.Page(2).Clear();
            AssertOk(connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, 2, 4, [new(pool.Ref(2), 0, 7)])), 2, R);
            Assert.True(pool.Page(2)[..2048].ToArray().All(b => b == (byte)round));
            Assert.True(pool.Page(2)[2048..].ToArray().All(b => b == (byte)(round + 50)));
        }

        Assert.Equal(3, connection.Statistics.PersistentGrantMisses);
        Assert.Equal(12, connection.Statistics.PersistentGrantHits);
        Assert.Equal(3, connection.Statistics.PersistentGrantsMapped);
        Assert.Equal(3, connection.DataPagesMapped);

        // Two new grants with one free entry: the second evicts the least recently used idle entry.
        AssertOk(connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, 4, 0, [new(pool.Ref(3), 0, 7), new(pool.Ref(4), 0, 7)])), 4, R);
        Assert.Equal(1, connection.Statistics.PersistentGrantEvictions);
        Assert.Equal(4, connection.Statistics.PersistentGrantsMapped);

        // Eight distinct grants in one request with room for four: four are cached, four are mapped
        // for the request only; the data is right either way, and the cache never exceeds its size.
        byte[] data = Pattern(8 * 4096, 8);
        Scatter(pool, pool.FullSegments(), data);
        AssertOk(connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, W, 3, 64, pool.FullSegments())), 3, W);
        Assert.Equal(data, memory.Contents.Slice(64 * 512, data.Length).ToArray());
        Assert.Equal(4, connection.Statistics.PersistentGrantsMapped);
        Assert.Equal(4, connection.DataPagesMapped);

        await connection.Ring.StopAsync();
        Assert.Equal(0, connection.DataPagesMapped);
        Assert.Equal(0, connection.Statistics.PersistentGrantsMapped);
        Assert.Equal(connection.Statistics.GrantMaps, connection.Statistics.GrantUnmaps);
        await connection.DisposeAsync();
        Assert.Equal(0, hypervisor.ActiveGrantMappings);
        Assert.True(pool.TryRelease());
    }

    [Fact]
    public async Task The_ring_reads_its_clock_per_loop_iteration_not_per_request()
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        var clock = new CountingTimeProvider();
        await using var connection = new RingConnection(hypervisor, guest, memory,
            features: new NegotiatedFeatures { PersistentGrants = true },
            options: new DataPlaneOptions { TimeProvider = clock }).Start();
        using var pages = new GuestBuffers(guest, 1, readOnly: false);

        // A whole ring of requests published at once: each is stamped at its start and end, and its
        // persistent grant at its release, with the time of the loop iteration that handled it.
        const int requests = 32;
        long before = clock.Reads;
        WireSlots.Response[] responses = connection.Submit([.. Enumerable.Range(0, requests)
            .Select(i => WireSlots.ReadWrite(BlkifProtocol.X86_64, R, (ulong)i, (ulong)i * 8, pages.FullSegments()))]);
        long reads = clock.Reads - before;

        Assert.All(responses, r => Assert.Equal(BlkifStatus.Okay, r.Status));
        Assert.Equal(requests, connection.Statistics.Requests(RingOperation.Read));
        Assert.True(reads < requests, $"{reads} clock reads for {requests} requests taken in {connection.Statistics.Batches} batch(es)");
    }

    /// <summary>The system clock, counting its reads.</summary>
    private sealed class CountingTimeProvider : TimeProvider
    {
        private long _reads;

        public long Reads => Interlocked.Read(ref _reads);

        public override long GetTimestamp()
        {
            Interlocked.Increment(ref _reads);
            return System.GetTimestamp();
        }
    }

    [Fact]
    public async Task Idle_persistent_grants_expire()
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        var time = new ManualTimeProvider();
        await using var connection = new RingConnection(hypervisor, guest, memory,
            features: new NegotiatedFeatures { PersistentGrants = true },
            options: new DataPlaneOptions { PersistentGrantIdleExpiry = TimeSpan.FromSeconds(60), TimeProvider = time }).Start();
        using var pool = new GuestBuffers(guest, 2, readOnly: false);

        AssertOk(connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, 1, 0, pool.FullSegments())), 1, R);
        Assert.Equal(2, connection.DataPagesMapped);

        time.Advance(TimeSpan.FromSeconds(30));
        AssertOk(connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, 2, 0, [new(pool.Ref(0), 0, 7)])), 2, R);

        // 61 s after the first request: the grant unused since then expires, the one used at 30 s stays.
        time.Advance(TimeSpan.FromSeconds(31));
        connection.Notify();
        RingConnection.WaitUntil(() => connection.Statistics.PersistentGrantExpirations == 1, "the idle grant to expire");
        Assert.Equal(1, connection.DataPagesMapped);
        Assert.False(guest.IsMapped(pool.Ref(1)));
        Assert.True(guest.IsMapped(pool.Ref(0)));
    }

    [Fact]
    public async Task Grant_copy_exhausting_bounce_buffers_applies_back_pressure_then_completes_everything()
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        using var device = new QueuedTestDevice(memory);
        await using var connection = new RingConnection(hypervisor, guest, device,
            features: new NegotiatedFeatures(),
            options: new DataPlaneOptions { DataPath = DataPath.GrantCopy, BounceBufferPages = 11, IoThreadsPerRing = 4 }).Start();
        var buffers = Enumerable.Range(0, 3).Select(_ => new GuestBuffers(guest, 11, readOnly: true)).ToList();
        for (int i = 0; i < 3; i++)
        {
            for (int p = 0; p < 11; p++)
            {
                buffers[i].Page(p).Fill((byte)((i * 11) + p));
            }
        }

        device.Hold();
        for (int i = 0; i < 3; i++)
        {
            connection.Queue(WireSlots.ReadWrite(BlkifProtocol.X86_64, W, (ulong)i, (ulong)i * 88, buffers[i].FullSegments()));
        }

        connection.Publish();
        RingConnection.WaitUntil(() => connection.Statistics.BackPressureEvents == 1, "back-pressure");
        RingConnection.WaitUntil(() => device.Entered == 1, "the first write to reach the device");

        // The second request waits for buffers and the third is not even taken off the ring.
        RingConnection.WaitUntil(() => connection.Statistics.InFlight == 2, "two requests taken, the third left in the ring");
        device.Release();

        WireSlots.Response[] responses = connection.WaitForResponses(3);
        Assert.All(responses, r => Assert.Equal(BlkifStatus.Okay, r.Status));
        for (int i = 0; i < 3; i++)
        {
            for (int p = 0; p < 11; p++)
            {
                Assert.Equal((byte)((i * 11) + p), memory.Contents[(i * 88 * 512) + (p * 4096) + 100]);
            }
        }

        buffers.ForEach(b => b.Dispose());
    }

    [Theory]
    [InlineData(DataPath.GrantMap, false)]
    [InlineData(DataPath.GrantMap, true)]
    [InlineData(DataPath.GrantCopy, false)]
    public async Task A_bad_grant_gets_an_error_and_the_ring_keeps_serving(DataPath path, bool persistent)
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        await using var connection = new RingConnection(hypervisor, guest, memory,
            features: new NegotiatedFeatures { PersistentGrants = persistent },
            options: new DataPlaneOptions { DataPath = path }).Start();
        using var readOnlyPage = new GuestBuffers(guest, 1, readOnly: true);
        using var good = new GuestBuffers(guest, 1, readOnly: false);

        // A ref that was never granted, mixed with a good one.
        AssertStatus(connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, 1, 0, [new(good.Ref(0), 0, 7), new(77_777, 0, 7)])), 1, R, BlkifStatus.Error);

        // A read into a page the guest granted read-only: we cannot write into it.
        AssertStatus(connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, 2, 0, readOnlyPage.FullSegments())), 2, R, BlkifStatus.Error);

        good.Page(0).Fill(0xEE);
        AssertOk(connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, W, 3, 8, good.FullSegments())), 3, W);
        Assert.Equal(0xEE, memory.Contents[8 * 512]);
        Assert.Equal(2, connection.Statistics.GuestErrors);
        Assert.Equal(persistent ? 1 : 0, connection.DataPagesMapped);
    }

    [Fact]
    public async Task An_impossible_request_producer_halts_that_ring_only()
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memoryA = new MemoryBlockDevice(DiskBytes);
        using var memoryB = new MemoryBlockDevice(DiskBytes);
        await using var broken = new RingConnection(hypervisor, guest, memoryA, name: "vbd/1/51712 queue 0").Start();
        await using var healthy = new RingConnection(hypervisor, guest, memoryB, name: "vbd/1/51712 queue 1").Start();
        using var pages = new GuestBuffers(guest, 1, readOnly: false);

        AssertOk(broken.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, 1, 0, pages.FullSegments())), 1, R);
        uint responsesBefore = broken.ResponseProducer;
        broken.PublishRawRequestProducer(broken.RequestProducer + (uint)broken.Entries + 1);
        RingConnection.WaitUntil(() => broken.StoppedUnexpectedlyCount == 1, "the ring to report the halt");
        Assert.True(broken.Ring.IsHalted);

        // Kicking it again changes nothing and logs nothing more.
        broken.Notify();
        broken.PublishRawRequestProducer(0xFFFF_FFF0);
        AssertOk(healthy.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, 2, 0, pages.FullSegments())), 2, R);
        Assert.Equal(responsesBefore, broken.ResponseProducer);
        Assert.True(broken.Statistics.Halted);
        Assert.Equal(1, broken.StoppedUnexpectedlyCount);
        Assert.Equal(1, broken.Logger.Count(2002));
        Assert.Null(broken.Ring.Fault);
        Assert.False(healthy.Ring.IsHalted);

        await broken.Ring.StopAsync();
        Assert.Equal(0, broken.DataPagesMapped);
    }

    [Theory]
    [InlineData(BlkifProtocol.X86_64)]
    [InlineData(BlkifProtocol.X86_32)]
    public async Task Every_byte_of_a_response_slot_is_written(BlkifProtocol protocol)
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        await using var connection = new RingConnection(hypervisor, guest, memory, protocol).Start();
        using var pages = new GuestBuffers(guest, 1, readOnly: false);

        // The ring was filled with 0xAA; requests are written with 0xAA padding too.
        uint first = connection.ResponseConsumer;
        connection.Submit(
            WireSlots.ReadWrite(protocol, R, 0x0102030405060708, 0, pages.FullSegments(), fill: 0xAA),
            WireSlots.Other(protocol, 0xC3, 0x1112131415161718, fill: 0xAA),
            WireSlots.ReadWrite(protocol, R, 0x2122232425262728, 0, [], fill: 0xAA));

        int responseSize = RingGeometry.ResponseSize(protocol);
        for (uint i = first; i < first + 3; i++)
        {
            byte[] slot = connection.SlotAt(i).ToArray();
            Assert.Equal(0, slot[9]);
            Assert.All(slot[12..], b => Assert.Equal(0, b));
            Assert.Equal(responseSize == 16 ? 16 : 12, responseSize);
        }

        WireSlots.Response unknown = WireSlots.ReadResponse(connection.SlotAt(first + 1));
        AssertStatus(unknown, 0x1112131415161718, 0xC3, BlkifStatus.EOpNotSupp);
        AssertStatus(WireSlots.ReadResponse(connection.SlotAt(first + 2)), 0x2122232425262728, R, BlkifStatus.Error);
    }

    [Fact]
    public async Task Notifications_follow_the_frontends_response_event()
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        await using var connection = new RingConnection(hypervisor, guest, memory).Start();

        // The frontend polls and says it wants no event before 1000 more responses.
        connection.SetResponseEvent(1000);
        long deliveriesBefore = connection.GuestEvents.Deliveries;
        for (int i = 0; i < 5; i++)
        {
            connection.Queue(WireSlots.ReadWrite(BlkifProtocol.X86_64, BlkifOperation.FlushDiskCache, (ulong)i, 0, []));
            connection.Publish();
            uint target = (uint)i + 1;
            RingConnection.WaitUntil(() => connection.ResponseProducer == target, "the response");
        }

        RingConnection.WaitUntil(() => connection.Statistics.NotificationsSuppressed == 5, "the last push to be counted");
        Assert.Equal(0, connection.Statistics.NotificationsSent);
        Assert.Equal(deliveriesBefore, connection.GuestEvents.Deliveries);

        // Now it waits for the next one (rsp_event = rsp_cons + 1): it gets an event.
        connection.WaitForResponses(5);
        connection.SetResponseEvent(connection.ResponseConsumer + 1);
        connection.Queue(WireSlots.ReadWrite(BlkifProtocol.X86_64, BlkifOperation.FlushDiskCache, 9, 0, []));
        connection.Publish();
        int port = connection.GuestEvents.WaitPending((int)RingConnection.HangGuard.TotalMilliseconds);
        Assert.Equal((int)connection.GuestPort, port);
        RingConnection.WaitUntil(() => connection.Statistics.NotificationsSent == 1, "the notification to be counted");
        Assert.Equal(5, connection.Statistics.NotificationsSuppressed);
    }

    [Fact]
    public async Task The_frontend_notifies_only_when_the_backend_asked_and_nothing_is_lost()
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        await using var connection = new RingConnection(hypervisor, guest, memory, options: new DataPlaneOptions { MaxBatch = 3 }).Start();

        // Many rounds of single requests: each relies on req_event being re-armed before the backend
        // sleeps (RING_FINAL_CHECK_FOR_REQUESTS); a lost wake-up shows as a request never answered.
        for (int i = 0; i < 300; i++)
        {
            AssertOk(connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, BlkifOperation.FlushDiskCache, (ulong)i, 0, [])), (ulong)i, BlkifOperation.FlushDiskCache);
        }

        Assert.Equal(300, connection.Statistics.Requests(RingOperation.Flush));
    }

    [Fact]
    public async Task Stop_completes_in_flight_io_and_nothing_is_answered_afterwards()
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        using var device = new QueuedTestDevice(memory);
        await using var connection = new RingConnection(hypervisor, guest, device).Start();
        using var pages = new GuestBuffers(guest, 1, readOnly: true);
        pages.Page(0).Fill(0x61);

        device.Hold();
        connection.Queue(WireSlots.ReadWrite(BlkifProtocol.X86_64, W, 1, 0, pages.FullSegments()));
        connection.Publish();
        RingConnection.WaitUntil(() => device.Entered == 1, "the write to reach the device");
        Task stopping = connection.Ring.StopAsync();
        Assert.False(stopping.IsCompleted);
        device.Release();
        await stopping;

        Assert.Equal(1u, connection.ResponseProducer);
        AssertOk(connection.WaitForResponses(1)[0], 1, W);
        Assert.Equal(0x61, memory.Contents[0]);
        Assert.Equal(0, connection.DataPagesMapped);
        Assert.Equal(1, connection.Logger.Count(2001));

        connection.Queue(WireSlots.ReadWrite(BlkifProtocol.X86_64, BlkifOperation.FlushDiskCache, 2, 0, []));
        connection.Publish();
        connection.Notify();
        // The kick is still pending on the backend's port: no thread of the stopped ring took it, so
        // nothing can answer the request later.
        Assert.Equal((int)connection.BackendPort, connection.TakePendingBackendKick());
        Assert.Equal(1u, connection.ResponseProducer);
        Assert.Same(stopping, connection.Ring.StopAsync());
    }

    [Fact]
    public async Task A_device_that_throws_faults_the_ring_visibly_and_releases_its_mappings()
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        using var device = new QueuedTestDevice(memory) { ThrowOnIo = new InvalidOperationException("storage bug") };
        await using var connection = new RingConnection(hypervisor, guest, device).Start();
        using var pages = new GuestBuffers(guest, 1, readOnly: false);

        connection.Queue(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, 1, 0, pages.FullSegments()));
        connection.Publish();
        RingConnection.WaitUntil(() => connection.StoppedUnexpectedlyCount == 1, "the ring to report its fault");

        Assert.IsType<InvalidOperationException>(connection.Ring.Fault);
        Assert.Equal("storage bug", connection.Ring.Fault!.Message);
        Assert.Equal(1, connection.Logger.Count(2003));
        Assert.Equal(0, connection.DataPagesMapped);
        await connection.Ring.StopAsync();
    }

    [Fact]
    public async Task Requests_queued_before_start_are_served()
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        await using var connection = new RingConnection(hypervisor, guest, memory);

        connection.Queue(WireSlots.ReadWrite(BlkifProtocol.X86_64, BlkifOperation.FlushDiskCache, 1, 0, []));
        connection.Queue(WireSlots.ReadWrite(BlkifProtocol.X86_64, BlkifOperation.FlushDiskCache, 2, 0, []));
        connection.Publish();
        connection.Start();

        WireSlots.Response[] responses = connection.WaitForResponses(2);
        Assert.Equal([1UL, 2UL], responses.Select(r => r.Id));
    }

    [Fact]
    public async Task An_online_resize_is_seen_by_the_next_request()
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(1 << 20);
        await using var connection = new RingConnection(hypervisor, guest, memory).Start();
        using var pages = new GuestBuffers(guest, 1, readOnly: false);
        ulong beyondOldEnd = (1 << 20) / 512;

        AssertStatus(connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, 1, beyondOldEnd, pages.FullSegments())), 1, R, BlkifStatus.Error);
        memory.Resize(2 << 20);
        memory.Refresh();
        AssertOk(connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, 2, beyondOldEnd, pages.FullSegments())), 2, R);
    }

    [Fact]
    public async Task A_multi_page_ring_wraps_its_indices_correctly()
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        await using var connection = new RingConnection(hypervisor, guest, memory, ringPages: 4).Start();
        Assert.Equal(128, connection.Entries);
        using var pages = new GuestBuffers(guest, 1, readOnly: true);

        // Three times round the ring, in bursts of 100.
        for (int burst = 0; burst < 4; burst++)
        {
            byte[][] slots = [.. Enumerable.Range(0, 100).Select(i => WireSlots.ReadWrite(BlkifProtocol.X86_64, W, (ulong)((burst * 100) + i), (ulong)i * 8, pages.FullSegments()))];
            WireSlots.Response[] responses = connection.Submit(slots);
            Assert.All(responses, r => Assert.Equal(BlkifStatus.Okay, r.Status));
        }

        Assert.Equal(400u, connection.ResponseProducer);
    }

    [Fact]
    public async Task Invalid_setup_and_options_are_refused_at_start()
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(DiskBytes);
        await using var connection = new RingConnection(hypervisor, guest, memory, options: new DataPlaneOptions { MaxBatch = 0 });

        Assert.Throws<ArgumentException>(connection.Ring.Start);
        var threePages = new BlkifRing(connection.Setup with { RingPageCount = 3, Options = new DataPlaneOptions() }, connection.Logger);
        Assert.Throws<ArgumentException>(threePages.Start);
        await threePages.StopAsync();
    }
}
