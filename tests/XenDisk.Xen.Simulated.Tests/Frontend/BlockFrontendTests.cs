using XenDisk.Abi;
using XenDisk.TestFrontend;
using XenDisk.Xen;
using XenDisk.Xen.Simulated;

namespace XenDisk.Xen.Simulated.Tests.Frontend;

public sealed class BlockFrontendTests : IAsyncLifetime
{
    private static readonly Dictionary<string, string> FullFeatures = new()
    {
        ["multi-queue-max-queues"] = "4",
        ["max-ring-page-order"] = "2",
        ["feature-persistent"] = "1",
        ["feature-max-indirect-segments"] = "64",
        ["feature-flush-cache"] = "1",
        ["feature-discard"] = "1",
        ["discard-granularity"] = "4096",
    };

    private readonly SimulatedHypervisor _hypervisor = new();
    private readonly SimulatedToolstack _toolstack;
    private readonly SimulatedDomain _guest;
    private readonly DiskAttachment _disk;

    public BlockFrontendTests()
    {
        _toolstack = new SimulatedToolstack(_hypervisor);
        _guest = _hypervisor.CreateDomain("guest", memoryPages: 8192);
        _disk = _toolstack.AttachDisk(_guest, 51712, "mem", readOnly: false);
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync()
    {
        _toolstack.Dispose();
        _hypervisor.Dispose();
        return Task.CompletedTask;
    }

    [Fact]
    public async Task Single_queue_single_page_handshake_publishes_the_classic_keys()
    {
        await using var backend = new ScriptedBackend(_hypervisor, _disk, new Dictionary<string, string>());
        await using var frontend = new BlockFrontend(_hypervisor, _guest, _disk, new FrontendOptions { Queues = 4, RingPageOrder = 3 });
        await frontend.ConnectAsync();

        Dictionary<string, string> keys = backend.FrontendKeys;
        Assert.True(keys.ContainsKey("ring-ref"));
        Assert.True(keys.ContainsKey("event-channel"));
        Assert.Equal("x86_64-abi", keys["protocol"]);
        Assert.Equal("1", keys["feature-persistent"]);
        Assert.False(keys.ContainsKey("ring-page-order"));
        Assert.False(keys.ContainsKey("multi-queue-num-queues"));
        Assert.False(keys.ContainsKey("ring-ref0"));
        Assert.True(backend.RingHeadersWereFresh);

        NegotiatedFrontendFeatures features = frontend.NegotiatedFrontendFeatures;
        Assert.Equal(1, features.Queues);
        Assert.Equal(0, features.RingPageOrder);
        Assert.Equal(32, features.RingEntries);
        Assert.Equal(BlkifLimits.MaxSegmentsPerRequest, features.MaxSegmentsPerRequest);
        Assert.False(features.PersistentGrants);
        Assert.Equal((ulong)(backend.DiskBytes / 512), frontend.Sectors);
        Assert.Equal(512u, frontend.SectorSize);
        Assert.Equal(XenbusState.Connected, frontend.FrontendState);
        Assert.Equal(XenbusState.Connected, _toolstack.ReadFrontendState(_disk));
    }

    [Fact]
    public async Task Multi_queue_multi_page_handshake_uses_queue_directories_and_ring_page_order()
    {
        await using var backend = new ScriptedBackend(_hypervisor, _disk, FullFeatures);
        await using var frontend = new BlockFrontend(_hypervisor, _guest, _disk, new FrontendOptions { Queues = 2, RingPageOrder = 3 });
        await frontend.ConnectAsync();

        Dictionary<string, string> keys = backend.FrontendKeys;
        Assert.Equal("2", keys["multi-queue-num-queues"]);
        Assert.Equal("2", keys["ring-page-order"]);
        foreach (string queue in (string[])["queue-0", "queue-1"])
        {
            Assert.True(keys.ContainsKey($"{queue}/ring-ref0"));
            Assert.True(keys.ContainsKey($"{queue}/ring-ref3"));
            Assert.False(keys.ContainsKey($"{queue}/ring-ref4"));
            Assert.True(keys.ContainsKey($"{queue}/event-channel"));
        }

        Assert.False(keys.ContainsKey("ring-ref"));
        Assert.False(keys.ContainsKey("event-channel"));
        Assert.NotEqual(keys["queue-0/event-channel"], keys["queue-1/event-channel"]);

        NegotiatedFrontendFeatures features = frontend.NegotiatedFrontendFeatures;
        Assert.Equal(2, features.Queues);
        Assert.Equal(2, features.RingPageOrder);
        Assert.Equal(RingGeometry.EntryCount(BlkifProtocol.X86_64, 2), features.RingEntries);
        Assert.Equal(32, features.IndirectSegments);
        Assert.True(features.PersistentGrants);
        Assert.True(features.FlushCache);
        Assert.True(features.Discard);
        Assert.Equal(4096u, features.DiscardGranularity);
        Assert.Equal(2, frontend.QueueCount);
    }

    [Fact]
    public async Task Legacy_num_ring_pages_spelling_and_x86_32_protocol()
    {
        await using var backend = new ScriptedBackend(_hypervisor, _disk, FullFeatures);
        await using var frontend = new BlockFrontend(_hypervisor, _guest, _disk,
            new FrontendOptions { RingPageOrder = 1, RingKeySpelling = RingKeySpelling.NumRingPages, Protocol = BlkifProtocol.X86_32 });
        await frontend.ConnectAsync();

        Dictionary<string, string> keys = backend.FrontendKeys;
        Assert.Equal("2", keys["num-ring-pages"]);
        Assert.False(keys.ContainsKey("ring-page-order"));
        Assert.True(keys.ContainsKey("ring-ref0") && keys.ContainsKey("ring-ref1"));
        Assert.Equal("x86_32-abi", keys["protocol"]);
        Assert.Equal(RingGeometry.EntryCount(BlkifProtocol.X86_32, 1), frontend.NegotiatedFrontendFeatures.RingEntries);

        byte[] data = Pattern(3 * 4096, 7);
        Assert.Equal(BlkifStatus.Okay, await frontend.WriteAsync(8, data));
        byte[] back = new byte[data.Length];
        Assert.Equal(BlkifStatus.Okay, await frontend.ReadAsync(8, back));
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task Misbehaviour_overrides_are_published_as_asked()
    {
        await using var backend = new ScriptedBackend(_hypervisor, _disk, new Dictionary<string, string>());
        await using var frontend = new BlockFrontend(_hypervisor, _guest, _disk, new FrontendOptions
        {
            ForceRingPageOrder = 1,
            SkipProtocolKey = true,
            UsePersistentGrants = false,
            ExtraKeys = new Dictionary<string, string> { ["custom"] = "x" },
        });
        await frontend.ConnectAsync();

        Dictionary<string, string> keys = backend.FrontendKeys;
        Assert.Equal("1", keys["ring-page-order"]);
        Assert.False(keys.ContainsKey("protocol"));
        Assert.Equal("0", keys["feature-persistent"]);
        Assert.Equal("x", keys["custom"]);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Data_written_is_read_back_across_direct_and_indirect_requests(bool persistent)
    {
        await using var backend = new ScriptedBackend(_hypervisor, _disk, FullFeatures);
        await using var frontend = new BlockFrontend(_hypervisor, _guest, _disk, new FrontendOptions { Queues = 2, RingPageOrder = 1, UsePersistentGrants = persistent });
        await frontend.ConnectAsync();

        // 1 sector, 11 pages (a full direct request), 40 pages (indirect: 32 + 8) and 100 pages (split over 4 requests).
        foreach ((long sector, int bytes) in new (long, int)[] { (1, 512), (64, 11 * 4096), (512, 40 * 4096), (2048, 100 * 4096) })
        {
            byte[] data = Pattern(bytes, (int)sector);
            Assert.Equal(BlkifStatus.Okay, await frontend.WriteAsync(sector, data));
            Assert.Equal(data, backend.Data.Slice((int)sector * 512, bytes).ToArray());
            byte[] back = new byte[bytes];
            Assert.Equal(BlkifStatus.Okay, await frontend.ReadAsync(sector, back));
            Assert.Equal(data, back);
        }

        Assert.Equal(BlkifStatus.Okay, await frontend.FlushAsync());
        Assert.Equal(BlkifStatus.Okay, await frontend.WriteBarrierAsync(8, Pattern(4096, 1)));
        Assert.Equal(BlkifStatus.Okay, await frontend.DiscardAsync(512, 80));
        Assert.True(backend.Data.Slice(512 * 512, 80 * 512).IndexOfAnyExcept((byte)0) < 0);
        Assert.Equal(BlkifStatus.Error, await frontend.ReadAsync((backend.DiskBytes / 512) - 1, new byte[1024]));

        Assert.Equal(0, frontend.ProtocolViolations);
        Assert.Equal(0, frontend.GrantEndFailures);
        Assert.Equal(persistent, frontend.NegotiatedFrontendFeatures.PersistentGrants);
        if (!persistent)
        {
            // Every data and indirect grant was ended: only the ring pages are still granted.
            Assert.Equal(2 * 2, _guest.ActiveGrants);
        }

        FrontendDisconnectResult result = await frontend.DisconnectAsync();
        Assert.Equal(new FrontendDisconnectResult(true, 0, 0, 0), result);
        Assert.Equal(0, _guest.ActiveGrants);
        Assert.Equal(0, _hypervisor.ActiveGrantMappings);
    }

    [Fact]
    public async Task Disconnect_then_reconnect_works_and_rings_are_new()
    {
        await using var backend = new ScriptedBackend(_hypervisor, _disk, FullFeatures);
        await using var frontend = new BlockFrontend(_hypervisor, _guest, _disk, new FrontendOptions { Queues = 2, RingPageOrder = 2 });
        await frontend.ConnectAsync();
        Assert.Equal(BlkifStatus.Okay, await frontend.WriteAsync(0, Pattern(4096, 5)));
        Assert.Equal(new FrontendDisconnectResult(true, 0, 0, 0), await frontend.DisconnectAsync());
        Assert.Equal(XenbusState.Closed, frontend.FrontendState);

        await frontend.ConnectAsync();
        Assert.Equal(2, backend.Connections);
        Assert.Equal("2", backend.FrontendKeys["multi-queue-num-queues"]);
        byte[] back = new byte[4096];
        Assert.Equal(BlkifStatus.Okay, await frontend.ReadAsync(0, back));
        Assert.Equal(Pattern(4096, 5), back);
        Assert.Equal(new FrontendDisconnectResult(true, 0, 0, 0), await frontend.DisconnectAsync());
    }

    [Fact]
    public async Task Reconnecting_with_a_smaller_layout_removes_stale_keys()
    {
        await using var backend = new ScriptedBackend(_hypervisor, _disk, FullFeatures);
        await using (var first = new BlockFrontend(_hypervisor, _guest, _disk, new FrontendOptions { Queues = 2, RingPageOrder = 2 }))
        {
            await first.ConnectAsync();
            await first.DisconnectAsync();
        }

        await using var second = new BlockFrontend(_hypervisor, _guest, _disk, new FrontendOptions { Queues = 1, RingPageOrder = 0 });
        await second.ConnectAsync();
        Assert.False(backend.FrontendKeys.ContainsKey("multi-queue-num-queues"));
        Assert.False(backend.FrontendKeys.ContainsKey("ring-page-order"));
        Assert.DoesNotContain(backend.FrontendKeys.Keys, k => k.StartsWith("queue-", StringComparison.Ordinal));
        Assert.True(backend.FrontendKeys.ContainsKey("ring-ref"));
    }

    [Fact]
    public async Task Toolstack_detach_is_followed_by_the_frontend()
    {
        await using var backend = new ScriptedBackend(_hypervisor, _disk, FullFeatures);
        await using var frontend = new BlockFrontend(_hypervisor, _guest, _disk);
        await frontend.ConnectAsync();

        // libxl writes state=5 into the backend directory; the frontend sees Closing and closes
        // (blkfront_closing), and the backend reaches Closed once the frontend is Closed.
        using IXenStore dom0 = _hypervisor.Platform(_hypervisor.Dom0).OpenXenStore();
        Task detach = _toolstack.DetachDiskAsync(_disk, TimeSpan.FromSeconds(10));
        FrontendDisconnectResult result = await frontend.DisconnectAsync().WaitAsync(TimeSpan.FromSeconds(10));
        await detach.WaitAsync(TimeSpan.FromSeconds(10));

        Assert.True(result.BackendReachedClosed);
        Assert.Equal(0, result.RingGrantsStillMapped);
        Assert.Null(dom0.Read(XenStoreTransaction.None, _disk.BackendPath));
        Assert.Equal(0, _guest.ActiveGrants);
    }

    [Fact]
    public async Task A_backend_that_keeps_data_pages_mapped_is_caught()
    {
        await using var backend = new ScriptedBackend(_hypervisor, _disk, new Dictionary<string, string>()) { LeakDataMappings = true };
        await using var frontend = new BlockFrontend(_hypervisor, _guest, _disk, new FrontendOptions { UsePersistentGrants = false });
        await frontend.ConnectAsync();

        Assert.Equal(BlkifStatus.Okay, await frontend.WriteAsync(0, Pattern(2 * 4096, 3)));
        Assert.Equal(2, frontend.GrantEndFailures);
    }

    [Fact]
    public async Task Responses_for_ids_not_outstanding_are_counted()
    {
        await using var backend = new ScriptedBackend(_hypervisor, _disk, new Dictionary<string, string>()) { DuplicateResponses = true };
        await using var frontend = new BlockFrontend(_hypervisor, _guest, _disk);
        await frontend.ConnectAsync();

        Assert.Equal(BlkifStatus.Okay, await frontend.FlushAsync());
        DateTime deadline = DateTime.UtcNow.AddSeconds(10);
        while (frontend.ProtocolViolations == 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(1);
        }

        Assert.Equal(1, frontend.ProtocolViolations);
    }

    [Fact]
    public async Task ConnectAsync_times_out_when_the_backend_never_offers_InitWait()
    {
        await using var frontend = new BlockFrontend(_hypervisor, _guest, _disk, new FrontendOptions { StateTimeout = TimeSpan.FromMilliseconds(100) });
        await Assert.ThrowsAsync<TimeoutException>(() => frontend.ConnectAsync());
    }

    [Fact]
    public async Task Raw_access_pushes_hand_made_requests_and_reads_responses()
    {
        await using var backend = new ScriptedBackend(_hypervisor, _disk, FullFeatures);
        await using var frontend = new BlockFrontend(_hypervisor, _guest, _disk);
        await frontend.ConnectAsync();
        backend.Data[..4096].Fill(0xAB);

        frontend.Raw.PauseCompletions(0);
        GrantedPage page = frontend.Raw.GrantPage();
        var request = new BlkifRequest64 { Operation = BlkifOperation.Read, NrSegments = 1, Id = 0xDEAD_BEEF_0000_0001, SectorNumber = 0 };
        request.Segments[0] = new BlkifRequestSegment { GrantRef = page.GrantRef, FirstSector = 0, LastSector = 7 };
        uint index = frontend.Raw.PushRequest(0, request);
        var unknown = new BlkifRequest64 { Operation = 200, Id = 77 };
        frontend.Raw.PushRequest(0, unknown);

        Assert.True(await frontend.Raw.WaitForResponseProducerAsync(0, index + 2, TimeSpan.FromSeconds(10)));
        Assert.Equal((0xDEAD_BEEF_0000_0001UL, BlkifOperation.Read, BlkifStatus.Okay), frontend.Raw.ReadResponse(0, index));
        Assert.Equal((77UL, (byte)200, BlkifStatus.EOpNotSupp), frontend.Raw.ReadResponse(0, index + 1));
        Assert.True(page.Page.Span.IndexOfAnyExcept((byte)0xAB) < 0);

        frontend.Raw.ResumeCompletions(0);
        Assert.Equal(BlkifStatus.Okay, await frontend.FlushAsync());
        Assert.Equal(0, frontend.ProtocolViolations);
        Assert.True(frontend.Raw.EndGrant(page));
    }

    [Fact]
    public async Task Load_generator_keeps_the_ring_full_and_verifies_data()
    {
        await using var backend = new ScriptedBackend(_hypervisor, _disk, FullFeatures);
        await using var frontend = new BlockFrontend(_hypervisor, _guest, _disk, new FrontendOptions { RingPageOrder = 1 });
        await frontend.ConnectAsync();

        using (var mixed = new FrontendLoadGenerator(frontend, new LoadGeneratorOptions { ReadPercent = 50, WritePercent = 40, FlushPercent = 5, DiscardPercent = 5 }))
        {
            Assert.Equal(frontend.NegotiatedFrontendFeatures.RingEntries, mixed.Depth);
            LoadGeneratorResult result = await mixed.RunAsync(TimeSpan.FromMilliseconds(200));
            Assert.True(result.Completions > mixed.Depth);
            Assert.Equal(0, result.Errors);
            Assert.Equal(0, result.SubmitFailures);
            Assert.Equal(result.Completions, result.Latency.TotalCount);
            Assert.True(result.BytesRead > 0 && result.BytesWritten > 0);
        }

        using (var verifying = new FrontendLoadGenerator(frontend, new LoadGeneratorOptions { Depth = 16, ReadPercent = 0, WritePercent = 100, ReadBackWrites = true }))
        {
            LoadGeneratorResult result = await verifying.RunVerifyingAsync(TimeSpan.FromMilliseconds(200));
            Assert.True(result.BytesVerified > 0);
            Assert.Equal(0, result.Mismatches);
            Assert.Equal(0, result.Errors);
        }

        Assert.Equal(0, frontend.ProtocolViolations);
        Assert.Equal(0, frontend.Outstanding);
        Assert.Equal(new FrontendDisconnectResult(true, 0, 0, 0), await frontend.DisconnectAsync());
    }

    [Fact]
    public async Task Verifying_load_detects_a_disk_that_loses_writes()
    {
        await using var backend = new ScriptedBackend(_hypervisor, _disk, FullFeatures);
        await using var frontend = new BlockFrontend(_hypervisor, _guest, _disk);
        await frontend.ConnectAsync();

        backend.DropWrites = true;
        using var verifying = new FrontendLoadGenerator(frontend, new LoadGeneratorOptions { Depth = 4, ReadPercent = 0, WritePercent = 100, ReadBackWrites = true });
        LoadGeneratorResult result = await verifying.RunVerifyingAsync(TimeSpan.FromMilliseconds(100));
        Assert.Equal(0, result.BytesVerified);
        Assert.True(result.Mismatches > 0);
    }

    [Fact]
    public async Task Verifying_mixed_load_checks_every_read_against_what_was_written_or_discarded()
    {
        await using var backend = new ScriptedBackend(_hypervisor, _disk, FullFeatures);
        await using var frontend = new BlockFrontend(_hypervisor, _guest, _disk, new FrontendOptions { UseIndirect = true, MaxIndirectSegments = 64 });
        await frontend.ConnectAsync();

        var mix = new LoadGeneratorOptions
        {
            Depth = 4, SectorCount = 4096, ReadPercent = 45, WritePercent = 40, FlushPercent = 8, DiscardPercent = 7,
            PagesPerRequest = 32, VariableRequestSize = true, SmallPagesPerRequest = 4,
        };
        using (var verifying = new FrontendLoadGenerator(frontend, mix))
        {
            LoadGeneratorResult result = await verifying.RunVerifyingAsync(TimeSpan.FromMilliseconds(200));
            Assert.True(result.BytesVerified > 0 && result.BytesWritten > 0 && result.BytesDiscarded > 0 && result.Flushes > 0);
            Assert.Equal(0, result.Mismatches);
            Assert.Equal(0, result.Errors);
            Assert.Equal(result.Completions, result.ReadLatency.TotalCount + result.WriteLatency.TotalCount + result.FlushLatency.TotalCount + result.DiscardLatency.TotalCount);
        }

        // The same mix over the untouched half of a disk that acknowledges writes without keeping them:
        // reads of written blocks differ from the model.
        backend.DropWrites = true;
        using (var losing = new FrontendLoadGenerator(frontend, mix with { FirstSector = 4096 }))
        {
            LoadGeneratorResult result = await losing.RunVerifyingAsync(TimeSpan.FromMilliseconds(200));
            Assert.True(result.Mismatches > 0);
        }
    }

    private static byte[] Pattern(int length, int seed)
    {
        byte[] data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }
}
