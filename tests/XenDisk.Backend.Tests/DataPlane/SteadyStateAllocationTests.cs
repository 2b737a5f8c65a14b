using XenDisk.Abi;
using XenDisk.Backend.DataPlane;
using XenDisk.Backend.Tests.DataPlane.Harness;
using XenDisk.Storage;
using XenDisk.Xen.Simulated;

namespace XenDisk.Backend.Tests.DataPlane;

/// <summary>Runs alone: it measures the process's allocations, which other tests running in parallel would disturb.</summary>
[CollectionDefinition(nameof(AllocationMeasurement), DisableParallelization = true)]
public sealed class AllocationMeasurement;

[Collection(nameof(AllocationMeasurement))]
public class SteadyStateAllocationTests
{
    /// <summary>
    /// The data plane allocates nothing per request once warm (preallocated contexts, no closures,
    /// no tasks, no boxing). Measured over the whole process, so the paths chosen are those where the
    /// simulated hypervisor allocates nothing either (grant copy; grant map with persistent hits).
    /// 20 000 requests allocating even one small object each would add at least 480 KB to every
    /// measured window; the bound leaves room for the runtime's own background allocations and nothing else.
    /// </summary>
    [Theory]
    [InlineData(DataPath.GrantCopy, true, false)]
    [InlineData(DataPath.GrantCopy, false, false)]
    [InlineData(DataPath.GrantMap, true, true)]
    public async Task Requests_allocate_nothing_in_steady_state(DataPath path, bool inline, bool persistent)
    {
        const int Requests = 20_000;
        const int Burst = 16;
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(1 << 20);
        using var queued = new QueuedTestDevice(memory) { RecordCalls = false };
        await using var connection = new RingConnection(hypervisor, guest, inline ? memory : queued,
            features: new NegotiatedFeatures { PersistentGrants = persistent },
            options: new DataPlaneOptions { DataPath = path, IoThreadsPerRing = 2 }).Start();
        using var pages = new GuestBuffers(guest, 2, readOnly: false);
        byte[] read = WireSlots.ReadWrite(BlkifProtocol.X86_64, BlkifOperation.Read, 1, 8, pages.FullSegments());
        byte[] write = WireSlots.ReadWrite(BlkifProtocol.X86_64, BlkifOperation.Write, 2, 24, pages.FullSegments());

        void Run(int count)
        {
            for (int done = 0; done < count; done += Burst)
            {
                for (int i = 0; i < Burst; i++)
                {
                    connection.Queue((i & 1) == 0 ? read : write);
                }

                connection.Publish();
                connection.SkipResponses(Burst);
            }
        }

        // The best of three windows: the runtime's own allocations (JIT, timers) come and go, one per request would be in every window.
        Run(4000);
        long allocated = long.MaxValue;
        for (int window = 0; window < 3; window++)
        {
            long before = GC.GetTotalAllocatedBytes(precise: true);
            Run(Requests);
            allocated = Math.Min(allocated, GC.GetTotalAllocatedBytes(precise: true) - before);
        }

        Assert.True(allocated < 64 * 1024, $"{allocated} bytes allocated for {Requests} requests");
        Assert.Equal(4000 + (3 * Requests), connection.Statistics.Requests(RingOperation.Read) + connection.Statistics.Requests(RingOperation.Write));
        Assert.Equal(0, connection.Statistics.GuestErrors + connection.Statistics.StorageErrors);
    }
}
