using System.Globalization;
using XenDisk.Abi;
using XenDisk.Backend.DataPlane;
using XenDisk.Backend.Tests.DataPlane.Harness;
using XenDisk.Storage;
using XenDisk.Xen.Simulated;

namespace XenDisk.Backend.Tests.DataPlane;

/// <summary>
/// Crash-safe restart: a ring thread ended as a kill would end it (at every point where the in-flight
/// record and the shared ring can disagree, chosen at random), then a new instance attaching to the
/// same connection. Every request must be answered exactly once, with the right data, and every
/// write acknowledged must be on the disk. XENDISK_CRASH_RESTARTS scales the number of kills.
/// </summary>
public sealed class CrashRestartTests : IDisposable
{
    private const int Block = 4096;
    private const int Requests = 28;
    private readonly TempDirectory _directory = new("xendisk-inflight-");

    public void Dispose() => _directory.Dispose();

    private static int Kills => int.TryParse(Environment.GetEnvironmentVariable("XENDISK_CRASH_RESTARTS"), NumberStyles.None, CultureInfo.InvariantCulture, out int n) ? n : 400;

    [Fact]
    public async Task A_ring_killed_anywhere_answers_every_request_exactly_once_after_restart()
    {
        var pointsHit = new HashSet<string>();
        int recoveredRuns = 0;
        for (int run = 0; run < Kills; run++)
        {
            (string? point, int recovered) = await KillAndRestart(run);
            if (point is not null)
            {
                pointsHit.Add(point);
            }

            recoveredRuns += recovered > 0 ? 1 : 0;
        }

        // The random kills must have reached every kind of point, and some runs must have had
        // requests in flight to redo, or the test proved nothing.
        Assert.Superset(new HashSet<string> { "consumed", "response written", "before publish", "published", "record: slot copied", "record: in flight", "record: answered", "record: rsp_prod_pvt" }, pointsHit);
        Assert.True(recoveredRuns > 0);
    }

    [Fact]
    public async Task A_record_from_another_connection_is_discarded_with_a_log_line()
    {
        string path = Path.Combine(_directory.Path, "other");
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(1 << 20);
        File.WriteAllBytes(path, new byte[InflightRecord.FileSize(32, 112)]);
        using (var other = InflightRecord.Open(path, 32, 112, identity: 12345, out _, out _))
        {
            other.Consumed(3, new byte[112], 0);
        }

        await using var connection = new RingConnection(hypervisor, guest, memory, inflightRecordPath: path).Start();
        using var page = new GuestBuffers(guest, 1, readOnly: true);
        Assert.Equal(BlkifStatus.Okay, connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, BlkifOperation.Write, 1, 0, page.FullSegments())).Status);
        Assert.Equal(1, connection.Logger.Count(2009));
        Assert.Equal(0, connection.Ring.RecoveredRequests);
    }

    [Fact]
    public async Task A_record_whose_indices_the_ring_has_not_reached_is_discarded()
    {
        // Same identity, but the frontend set the ring up afresh: the record's req_cons lies beyond
        // anything the new ring has produced, so replaying it would answer requests never made.
        string path = Path.Combine(_directory.Path, "reset");
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var memory = new MemoryBlockDevice(1 << 20);
        await using var connection = new RingConnection(hypervisor, guest, memory, inflightRecordPath: path);
        using (var stale = InflightRecord.Open(path, connection.Entries, connection.SlotSize, InflightRecord.HashIdentity(connection.Setup.InflightIdentity), out _, out _))
        {
            stale.Consumed(0, new byte[connection.SlotSize], 0);
            stale.Consumed(1, new byte[connection.SlotSize], 1);
            stale.Consumed(2, new byte[connection.SlotSize], 2);
        }

        connection.Start();
        using var page = new GuestBuffers(guest, 1, readOnly: true);
        Assert.Equal(BlkifStatus.Okay, connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, BlkifOperation.Write, 7, 0, page.FullSegments())).Status);
        Assert.Equal(1u, connection.ResponseProducer);
        Assert.Equal(0, connection.Ring.RecoveredRequests);
        Assert.Equal(1, connection.Logger.Count(2009));
    }

    private async Task<(string? Point, int Recovered)> KillAndRestart(int seed)
    {
        var random = new Random(seed);
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        const int DiskBytes = 1 << 20;
        using var memory = new MemoryBlockDevice(DiskBytes);
        memory.Contents.Fill(0xEE);
        string path = Path.Combine(_directory.Path, "ring-" + seed.ToString(CultureInfo.InvariantCulture));
        await using var connection = new RingConnection(hypervisor, guest, memory, inflightRecordPath: path,
            options: new DataPlaneOptions { MaxBatch = 1 + random.Next(8) });

        int killAt = 1 + random.Next(Requests * 4);
        int calls = 0;
        string? killedAt = null;
        connection.Ring.KillPoint = point =>
        {
            if (++calls == killAt)
            {
                killedAt = point;
                throw new RingKilledForTest(point);
            }
        };
        connection.Start();

        // The guest's requests: writes of distinct blocks (value = id), reads of blocks nobody writes,
        // flushes and barriers among them, discards of other blocks.
        var pages = new List<GuestBuffers>();
        var expected = new Dictionary<ulong, (byte Operation, int BlockIndex)>();
        for (int i = 0; i < Requests; i++)
        {
            ulong id = 1000 + (ulong)i;
            int choice = random.Next(10);
            byte operation = choice switch
            {
                < 5 => BlkifOperation.Write,
                < 8 => BlkifOperation.Read,
                8 => BlkifOperation.FlushDiskCache,
                _ => BlkifOperation.Discard,
            };
            int blockIndex = operation == BlkifOperation.Read ? 100 + i : i;
            expected[id] = (operation, blockIndex);
            ulong sector = (ulong)blockIndex * (Block / 512);
            if (operation == BlkifOperation.Discard)
            {
                connection.Queue(WireSlots.Discard(BlkifProtocol.X86_64, id, sector, Block / 512));
                continue;
            }

            if (operation == BlkifOperation.FlushDiskCache)
            {
                connection.Queue(WireSlots.ReadWrite(BlkifProtocol.X86_64, operation, id, 0, []));
                continue;
            }

            var page = new GuestBuffers(guest, 1, readOnly: false);
            page.Page(0).Fill(operation == BlkifOperation.Write ? (byte)i : (byte)0x5A);
            pages.Add(page);
            connection.Queue(WireSlots.ReadWrite(BlkifProtocol.X86_64, operation, id, sector, page.FullSegments()));
        }

        connection.Publish();
        RingConnection.WaitUntil(() => connection.Ring.Exited.IsCompleted || connection.ResponseProducer == Requests, "the ring to answer or die");
        int recovered = 0;
        if (killedAt is not null)
        {
            await connection.Ring.Exited;
            BlkifRing restarted = connection.RestartRing();
            connection.Notify();
            RingConnection.WaitUntil(() => connection.ResponseProducer == Requests, $"the restarted ring to answer everything (killed at {killedAt}, call {killAt})");
            recovered = restarted.RecoveredRequests;
        }

        WireSlots.Response[] responses = connection.WaitForResponses(Requests);
        Assert.Equal(expected.Keys.Order(), responses.Select(r => r.Id).Order());
        Assert.All(responses, r => Assert.Equal(BlkifStatus.Okay, r.Status));
        await connection.Ring.StopAsync();
        Assert.Equal((uint)Requests, connection.ResponseProducer);
        Assert.False(File.Exists(path), "a clean stop leaves no record");

        int pageIndex = 0;
        foreach ((ulong id, (byte operation, int blockIndex)) in expected.OrderBy(e => e.Key))
        {
            if (operation is BlkifOperation.Write)
            {
                Assert.True(memory.Contents.Slice(blockIndex * Block, Block).IndexOfAnyExcept((byte)(id - 1000)) < 0, $"write {id} (killed at {killedAt})");
                pageIndex++;
            }
            else if (operation == BlkifOperation.Read)
            {
                Assert.True(pages[pageIndex].Page(0).IndexOfAnyExcept((byte)0xEE) < 0, $"read {id} (killed at {killedAt})");
                pageIndex++;
            }
            else if (operation == BlkifOperation.Discard)
            {
                Assert.True(memory.Contents.Slice(blockIndex * Block, Block).IndexOfAnyExcept((byte)0) < 0, $"discard {id} (killed at {killedAt})");
            }
        }

        pages.ForEach(p => p.Dispose());
        return (killedAt, recovered);
    }
}
