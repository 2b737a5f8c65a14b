using XenDisk.Abi;
using XenDisk.Backend.DataPlane;
using XenDisk.Backend.Tests.DataPlane.Harness;
using XenDisk.Storage;
using XenDisk.Storage.Iscsi;
using XenDisk.TestSupport.Iscsi;
using XenDisk.Xen.Simulated;

namespace XenDisk.Backend.Tests.DataPlane;

/// <summary>
/// Rings serving an iSCSI LUN (a real tgtd on 127.0.0.1) through their own queues: each ring thread
/// drives a libiscsi session of its own from its io_uring loop (IPolledBlockDevice).
/// </summary>
[Trait(Needs.Key, Needs.Tgtd)]
public sealed class IscsiRingTests : IDisposable
{
    private const string Iqn = "iqn.2026-12.org.xendisk.test:ring";
    private const long LunSize = 16L << 20;
    private const byte R = BlkifOperation.Read;
    private const byte W = BlkifOperation.Write;

    private readonly TempDirectory _work = new("xendisk-ring-iscsi-");

    public void Dispose() => _work.Dispose();

    private string LunFile => Path.Combine(_work.Path, "lun1.img");

    private TgtdTarget StartTarget()
    {
        using (FileStream file = File.Create(LunFile))
        {
            file.SetLength(LunSize);
        }
        return TgtdTarget.Start(Path.Combine(_work.Path, "tgtd"), new TgtdTargetDefinition(Iqn, [new TgtdLun(1, LunFile)]));
    }

    [TgtdFact]
    public async Task A_whole_ring_of_writes_a_flush_and_reads_take_the_rings_own_queue_and_reach_the_lun()
    {
        using TgtdTarget target = StartTarget();
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using IscsiBlockDevice device = IscsiBlockDevice.Open(IscsiUrl.Parse(target.Url(Iqn, 1)), readOnly: false, new IscsiOptions());
        await using var connection = new RingConnection(hypervisor, guest, device,
            options: new DataPlaneOptions { IoEngine = IoEngine.IoUring, MaxBatch = 8 }).Start();

        const int Requests = 32; // the whole ring
        var writes = new List<GuestBuffers>();
        var slots = new List<byte[]>();
        for (int i = 0; i < Requests; i++)
        {
            var pages = new GuestBuffers(guest, 2, readOnly: true);
            new Random(i).NextBytes(pages.Page(0));
            new Random(i + 1000).NextBytes(pages.Page(1));
            writes.Add(pages);
            slots.Add(WireSlots.ReadWrite(BlkifProtocol.X86_64, W, (ulong)i, (ulong)i * 16, pages.FullSegments()));
        }
        WireSlots.Response[] written = connection.Submit([.. slots]);
        Assert.All(written, r => Assert.Equal(BlkifStatus.Okay, r.Status));
        Assert.Equal(BlkifStatus.Okay, connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, BlkifOperation.FlushDiskCache, 100, 0, [])).Status);

        // What the guest wrote is in the LUN's file, and reads bring it back into other pages.
        byte[] lun = File.ReadAllBytes(LunFile);
        var reads = new List<GuestBuffers>();
        slots.Clear();
        for (int i = 0; i < Requests; i++)
        {
            Assert.True(writes[i].Page(0).SequenceEqual(lun.AsSpan(i * 8192, 4096)), $"write {i} is not in the LUN");
            Assert.True(writes[i].Page(1).SequenceEqual(lun.AsSpan((i * 8192) + 4096, 4096)), $"write {i} is not in the LUN");
            var pages = new GuestBuffers(guest, 2, readOnly: false);
            reads.Add(pages);
            slots.Add(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, (ulong)(200 + i), (ulong)i * 16, pages.FullSegments()));
        }
        Assert.All(connection.Submit([.. slots]), r => Assert.Equal(BlkifStatus.Okay, r.Status));
        for (int i = 0; i < Requests; i++)
        {
            Assert.True(reads[i].Page(0).SequenceEqual(writes[i].Page(0)) && reads[i].Page(1).SequenceEqual(writes[i].Page(1)), $"read {i} differs");
        }

        // Every request ran on the ring's own queue: none was handed to an I/O thread.
        Assert.Equal(Requests + 1 + Requests, connection.Statistics.FastPathRequests);
        writes.ForEach(w => w.Dispose());
        reads.ForEach(r => r.Dispose());
    }

    [TgtdFact]
    public async Task Two_rings_on_one_reserved_lun_each_write_through_their_own_session_and_the_host_keeps_the_reservation()
    {
        using TgtdTarget target = StartTarget();
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        IscsiUrl url = IscsiUrl.Parse(target.Url(Iqn, 1));
        using IscsiBlockDevice device = IscsiBlockDevice.Open(url, readOnly: false, new IscsiOptions { ReservationKey = 0xa1 });
        DataPlaneOptions options = new() { IoEngine = IoEngine.IoUring };
        using var first = new GuestBuffers(guest, 1, readOnly: true);
        using var second = new GuestBuffers(guest, 1, readOnly: true);
        first.Page(0).Fill(0x11);
        second.Page(0).Fill(0x22);
        await using (var queue0 = new RingConnection(hypervisor, guest, device, options: options, name: "vbd/1/51712 queue 0").Start())
        await using (var queue1 = new RingConnection(hypervisor, guest, device, options: options, name: "vbd/1/51712 queue 1").Start())
        {
            // Each ring's session is a registrant of the host's key: a conflict here would be an error response.
            Assert.Equal(BlkifStatus.Okay, queue0.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, W, 1, 0, first.FullSegments())).Status);
            Assert.Equal(BlkifStatus.Okay, queue1.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, W, 2, 8, second.FullSegments())).Status);
            using var back = new GuestBuffers(guest, 1, readOnly: false);
            Assert.Equal(BlkifStatus.Okay, queue0.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, 3, 8, back.FullSegments())).Status);
            Assert.True(back.Page(0).IndexOfAnyExcept((byte)0x22) < 0, "a write through one ring's session is not seen by the other's");
            Assert.Equal(2, queue0.Statistics.FastPathRequests);
            Assert.Equal(1, queue1.Statistics.FastPathRequests);
        }

        // Both rings stopped and logged out: the reservation is still the host's, and the device writes.
        Assert.Equal(0xa1ul, IscsiBlockDevice.ReadReservation(url, new IscsiOptions())!.Value.Key);
        Assert.Equal(IoStatus.Ok, device.WriteAt(1 << 20, new byte[4096]));
    }
}
