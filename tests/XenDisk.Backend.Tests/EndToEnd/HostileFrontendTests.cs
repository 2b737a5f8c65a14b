using System.Runtime.InteropServices;
using XenDisk.Abi;
using XenDisk.Backend.Tests.Harness;
using XenDisk.TestFrontend;
using XenDisk.Xen.Simulated;
using Xunit.Abstractions;

namespace XenDisk.Backend.Tests.EndToEnd;

/// <summary>
/// A guest that writes garbage into its ring: random slot bytes, impossible producer indices and
/// indirect requests whose indirect pages hold garbage. The backend must answer or halt that
/// device only: the process stays up, nothing hangs, a second guest's device keeps serving
/// verified I/O, and no mapping outlives the disconnects.
/// </summary>
public sealed class HostileFrontendTests(ITestOutputHelper output)
{
    /// <summary>Bounded so the test stays fast on two cores; the seed varies per run and is printed.</summary>
    private const int HostileIterations = 300;

    private const string SeedVariable = "XENDISK_HOSTILE_SEED";

    [Fact]
    public async Task Garbage_on_one_ring_never_disturbs_another_device()
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable(SeedVariable), out int fixedSeed) ? fixedSeed : Random.Shared.Next();
        output.WriteLine($"hostile seed {seed} (set {SeedVariable} to replay)");
        var random = new Random(seed);

        await using BackendTestBed bed = await BackendTestBed.StartAsync(output);

        // Two guests: a hostile guest's random grant refs must not be able to reach the healthy guest's pages.
        SimulatedDomain hostileGuest = bed.CreateGuest("hostile");
        SimulatedDomain healthyGuest = bed.CreateGuest("healthy");
        DiskAttachment hostileDisk = await bed.AttachReadyAsync(hostileGuest, 51712, "hostile", 2 << 20);
        DiskAttachment healthyDisk = await bed.AttachReadyAsync(healthyGuest, 51712, "healthy", 4 << 20);

        await using BlockFrontend healthy = await FrontendHarness.ConnectAsync(bed, healthyDisk, new FrontendOptions { Queues = 2 });
        await using BlockFrontend hostile = await FrontendHarness.ConnectAsync(bed, hostileDisk, new FrontendOptions { MaxIndirectSegments = 64 });
        hostile.Raw.PauseCompletions(0);

        using var load = new FrontendLoadGenerator(healthy, new LoadGeneratorOptions { Queue = 1, Depth = 8, FirstSector = 4096, SectorCount = 2048, Seed = (ulong)seed, ReadPercent = 0, WritePercent = 100, ReadBackWrites = true });
        Task<LoadGeneratorResult> loading = load.RunVerifyingAsync(TimeSpan.FromSeconds(1));
        Task verifying = Task.Run(async () =>
        {
            for (int i = 0; i < 40; i++)
            {
                await FrontendHarness.WriteReadVerifyAsync(healthy, (i % 16) * 128L, 32 * 1024, seed + i, queue: 0);
            }
        });

        int reconnects = 0;
        for (int iteration = 0; iteration < HostileIterations; iteration++)
        {
            if (bed.Toolstack.ReadBackendState(hostileDisk) == XenbusState.Closed)
            {
                // The backend halted the ring and closed the device; the guest starts over, as blkfront would.
                await hostile.DisconnectAsync().WaitAsync(BackendTestBed.Timeout);
                await hostile.ConnectAsync().WaitAsync(BackendTestBed.Timeout);
                hostile.Raw.PauseCompletions(0);
                reconnects++;
                continue;
            }

            if (!hostile.IsConnected)
            {
                break;
            }

            DoSomethingHostile(hostile, random);
            if (iteration % 8 == 0)
            {
                await Task.Delay(1);
            }
        }

        await verifying.WaitAsync(BackendTestBed.Timeout);
        LoadGeneratorResult result = await loading.WaitAsync(BackendTestBed.Timeout);
        output.WriteLine($"{reconnects} reconnects of the hostile device; healthy load: {result.Completions} completions, {result.BytesVerified} bytes verified");
        Assert.Equal(0, result.Mismatches);
        Assert.Equal(0, result.Errors);
        Assert.True(result.BytesVerified > 0);
        Assert.Equal(XenbusState.Connected, bed.Toolstack.ReadBackendState(healthyDisk));

        FrontendDisconnectResult hostileClosed = await hostile.DisconnectAsync().WaitAsync(BackendTestBed.Timeout);
        Assert.Equal(0, hostileClosed.RingGrantsStillMapped);
        Assert.Equal(0, hostileClosed.DataGrantsStillMapped);
        await FrontendHarness.DisconnectCleanlyAsync(bed, healthy, otherDevicesConnected: false);
        await BackendTestBed.WaitUntilAsync(() => bed.Hypervisor.ActiveGrantMappings == 0, "every grant mapping is released");
    }

    private static void DoSomethingHostile(BlockFrontend frontend, Random random)
    {
        RawFrontendAccess raw = frontend.Raw;
        switch (random.Next(10))
        {
            case 0:
                // An impossible (or merely odd) producer index.
                raw.SetRequestProducer(0, (uint)random.NextInt64(0, uint.MaxValue + 1L));
                raw.Notify(0);
                break;

            case 1:
            case 2:
            case 3:
            {
                // A slot of pure garbage.
                byte[] slot = new byte[raw.SlotSize(0)];
                random.NextBytes(slot);
                raw.PushRequest(0, MemoryMarshal.Read<BlkifRequest64>(slot));
                break;
            }

            case 4:
            case 5:
            case 6:
            {
                // An indirect request whose indirect page is garbage, with a plausible header.
                GrantedPage page = raw.GrantPage();
                random.NextBytes(page.Page.Span);
                var request = new BlkifRequestIndirect64
                {
                    Operation = BlkifOperation.Indirect,
                    IndirectOperation = (byte)random.Next(3),
                    NrSegments = (ushort)random.Next(0, 600),
                    Id = (ulong)random.NextInt64(),
                    SectorNumber = (ulong)random.Next(0, 8192),
                    Handle = frontend.DeviceHandle,
                };
                request.IndirectGrantRefs[0] = page.GrantRef;
                for (int i = 1; i < BlkifLimits.MaxIndirectPagesPerRequest; i++)
                {
                    request.IndirectGrantRefs[i] = random.Next(2) == 0 ? page.GrantRef : (uint)random.Next();
                }

                raw.PushRequest(0, request);
                break;
            }

            default:
            {
                // A direct request with random operation, counts and segments.
                var request = new BlkifRequest64
                {
                    Operation = (byte)random.Next(8),
                    NrSegments = (byte)random.Next(0, 16),
                    Handle = frontend.DeviceHandle,
                    Id = (ulong)random.NextInt64(),
                    SectorNumber = (ulong)random.NextInt64(0, 1 << 14),
                };
                for (int i = 0; i < BlkifLimits.MaxSegmentsPerRequest; i++)
                {
                    request.Segments[i] = new BlkifRequestSegment
                    {
                        GrantRef = (uint)random.Next(0, 4096),
                        FirstSector = (byte)random.Next(0, 10),
                        LastSector = (byte)random.Next(0, 10),
                    };
                }

                raw.PushRequest(0, request);
                break;
            }
        }
    }
}
