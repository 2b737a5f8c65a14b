using XenDisk.Storage.Iscsi;
using XenDisk.TestSupport.Iscsi;

namespace XenDisk.Storage.Tests.Iscsi;

/// <summary>SCSI-3 persistent reservations keep two hosts (two host keys) from writing one LUN; tgtd is the target.</summary>
[Trait(Needs.Key, Needs.Tgtd)]
public sealed class IscsiReservationTests
{
    private const long Size = 16L << 20;
    private const ulong HostA = 0xa1;
    private const ulong HostB = 0xb2;

    private static IscsiOptions Host(ulong key, string name) => new()
    {
        ReservationKey = key,
        InitiatorName = $"iqn.2026-12.org.xendisk.test:{name}",
        CommandTimeout = TimeSpan.FromSeconds(20),
    };

    [TgtdFact]
    public void A_second_host_is_refused_while_the_first_writes_and_admitted_after_it_stops()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        IscsiUrl url = IscsiUrl.Parse(rig.Url());
        IscsiBlockDevice first = IscsiBlockDevice.Open(url, readOnly: false, Host(HostA, "host-a"));
        try
        {
            Assert.Equal(HostA, first.ReservationKey);
            Assert.Equal(IoStatus.Ok, first.WriteAt(0, IscsiBlockDeviceTests.Pattern(4096, 1)));
            StorageException refused = Assert.Throws<StorageException>(() => IscsiBlockDevice.Open(url, readOnly: false, Host(HostB, "host-b")));
            Assert.Contains("reserved by another host (host key 0x00000000000000a1)", refused.Message, StringComparison.Ordinal);
            Assert.Contains("xendisk image unlock --force " + url, refused.Message, StringComparison.Ordinal);
            Assert.DoesNotContain('\n', refused.Message);
            // Reading stays open to every host (a golden base is shared read-only, unreserved).
            using (IscsiBlockDevice reader = IscsiBlockDevice.Open(url, readOnly: true, Host(HostB, "host-b")))
            {
                Assert.Equal(0ul, reader.ReservationKey);
                byte[] back = new byte[4096];
                Assert.Equal(IoStatus.Ok, reader.ReadAt(0, back));
                Assert.Equal(IscsiBlockDeviceTests.Pattern(4096, 1), back);
            }
            Assert.Equal(HostA, IscsiBlockDevice.ReadReservation(url, new IscsiOptions())!.Value.Key);
        }
        finally
        {
            first.Dispose();
        }
        // A clean stop released it.
        Assert.Null(IscsiBlockDevice.ReadReservation(url, new IscsiOptions()));
        using IscsiBlockDevice second = IscsiBlockDevice.Open(url, readOnly: false, Host(HostB, "host-b"));
        Assert.Equal(IoStatus.Ok, second.WriteAt(4096, IscsiBlockDeviceTests.Pattern(4096, 2)));
        Assert.Equal(HostB, IscsiBlockDevice.ReadReservation(url, new IscsiOptions())!.Value.Key);
    }

    [TgtdFact]
    public void The_same_host_reopens_its_own_reservation()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        IscsiUrl url = IscsiUrl.Parse(rig.Url());
        using IscsiBlockDevice first = IscsiBlockDevice.Open(url, readOnly: false, Host(HostA, "host-a"));
        using IscsiBlockDevice again = IscsiBlockDevice.Open(url, readOnly: false, Host(HostA, "host-a"));
        Assert.Equal(IoStatus.Ok, again.WriteAt(0, IscsiBlockDeviceTests.Pattern(4096, 3)));
        Assert.Equal(IoStatus.Ok, first.WriteAt(4096, IscsiBlockDeviceTests.Pattern(4096, 4)));
    }

    [TgtdFact]
    public void A_reserved_lun_keeps_writing_across_a_target_restart()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        IscsiUrl url = IscsiUrl.Parse(rig.Url());
        using IscsiBlockDevice device = IscsiBlockDevice.Open(url, readOnly: false, Host(HostA, "host-a"));
        Assert.Equal(IoStatus.Ok, device.WriteAt(0, IscsiBlockDeviceTests.Pattern(4096, 5)));
        // tgtd keeps no reservations across a restart, and the session comes back as a new I_T nexus:
        // the device takes its reservation again and the write goes through.
        rig.Target.Kill();
        rig.Target.Start();
        Assert.Equal(IoStatus.Ok, device.WriteAt(8192, IscsiBlockDeviceTests.Pattern(4096, 6)));
        Assert.Equal(HostA, IscsiBlockDevice.ReadReservation(url, new IscsiOptions())!.Value.Key);
    }

    [TgtdFact]
    public void Breaking_a_dead_hosts_reservation_fences_it_and_admits_the_next()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        IscsiUrl url = IscsiUrl.Parse(rig.Url());
        // The "dead" host: its device is never closed cleanly, so its reservation stays.
        using IscsiBlockDevice stale = IscsiBlockDevice.Open(url, readOnly: false, Host(HostA, "host-a"));
        Assert.Throws<StorageException>(() => IscsiBlockDevice.Open(url, readOnly: false, Host(HostB, "host-b")));

        IscsiReservationHolder? broken = IscsiBlockDevice.BreakReservation(url, new IscsiOptions { InitiatorName = "iqn.2026-12.org.xendisk.test:operator" });
        Assert.Equal(HostA, broken!.Value.Key);
        Assert.Null(IscsiBlockDevice.BreakReservation(url, new IscsiOptions()));

        using IscsiBlockDevice next = IscsiBlockDevice.Open(url, readOnly: false, Host(HostB, "host-b"));
        Assert.Equal(IoStatus.Ok, next.WriteAt(0, IscsiBlockDeviceTests.Pattern(4096, 7)));
        // The old holder, should it come back to life, can no longer write: it lost its registration.
        Assert.Equal(IoStatus.IoError, stale.WriteAt(0, IscsiBlockDeviceTests.Pattern(4096, 8)));
        byte[] back = new byte[4096];
        Assert.Equal(IoStatus.Ok, next.ReadAt(0, back));
        Assert.Equal(IscsiBlockDeviceTests.Pattern(4096, 7), back);
    }

    [TgtdFact]
    public void Taking_the_reservation_again_at_full_queue_depth_needs_no_free_slot()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        IscsiUrl url = IscsiUrl.Parse(rig.Url());
        // Two slots and three times as many writers: when the session comes back every slot is taken by a
        // write waiting for it, and the reservation's commands must still run.
        using IscsiBlockDevice device = IscsiBlockDevice.Open(url, readOnly: false, Host(HostA, "host-a") with { QueueDepth = 2, CommandTimeout = TimeSpan.FromSeconds(60) });
        const int Threads = 6;
        const int Writes = 60;
        IoStatus[,] results = rig.WriteThroughARestart(device, Threads, Writes, TimeSpan.FromSeconds(150),
            "a writer never got its answer: the reservation waited for a slot held by a write waiting for the reservation");
        Assert.All(results.Cast<IoStatus>(), status => Assert.Equal(IoStatus.Ok, status));
        Assert.True(device.Reconnects >= 1);
        Assert.Equal(HostA, IscsiBlockDevice.ReadReservation(url, new IscsiOptions())!.Value.Key);
        byte[] lun = File.ReadAllBytes(rig.LunPath(1));
        for (int t = 0; t < Threads; t++)
        {
            for (int i = 0; i < Writes; i++)
            {
                int offset = (t * Writes + i) * 4096;
                Assert.Equal(IscsiBlockDeviceTests.Pattern(4096, t * Writes + i), lun[offset..(offset + 4096)]);
            }
        }
    }

    [TgtdFact]
    public void After_a_reconnect_nothing_is_issued_before_the_reservation_is_taken_again()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        IscsiUrl url = IscsiUrl.Parse(rig.Url());
        using IscsiBlockDevice device = IscsiBlockDevice.Open(url, readOnly: false, Host(HostA, "host-a"));
        System.Collections.Concurrent.ConcurrentQueue<(IscsiOperation Operation, int Code, long Reconnects)> issued = new();
        device.Session.Issued = (operation, code) => issued.Enqueue((operation, code, device.Session.Reconnects));
        using CancellationTokenSource stop = new();
        const int Threads = 8;
        Task<int>[] writers = Enumerable.Range(0, Threads).Select(t => Task.Factory.StartNew(() =>
        {
            int failures = 0;
            for (int i = 0; !stop.IsCancellationRequested; i++)
            {
                failures += device.WriteAt(((long)t * 256 + i % 256) * 4096, IscsiBlockDeviceTests.Pattern(4096, i)) == IoStatus.Ok ? 0 : 1;
            }
            return failures;
        }, TaskCreationOptions.LongRunning)).ToArray();
        SpinWait.SpinUntil(() => issued.Count > 200, TimeSpan.FromSeconds(30));
        rig.Target.Kill();
        rig.Target.Start();
        Assert.True(SpinWait.SpinUntil(() => issued.Count(e => e.Reconnects >= 1 && e.Operation == IscsiOperation.Write) > 200, TimeSpan.FromSeconds(90)), "writes did not resume after the target came back");
        stop.Cancel();
        Assert.True(Task.WaitAll(writers, TimeSpan.FromSeconds(60)));
        Assert.All(writers, writer => Assert.Equal(0, writer.Result));

        // In the order the session handed commands to libiscsi after it came back: tgtd forgot the
        // reservation in its restart, so READ RESERVATION, REGISTER AND IGNORE EXISTING KEY (6) and
        // RESERVE (1) come first, and only then a write.
        var after = issued.Where(e => e.Reconnects >= 1).ToList();
        int firstWrite = after.FindIndex(e => e.Operation == IscsiOperation.Write);
        int register = after.FindIndex(e => e.Operation == IscsiOperation.PersistentReserveOut && e.Code == 6);
        int reserve = after.FindIndex(e => e.Operation == IscsiOperation.PersistentReserveOut && e.Code == 1);
        Assert.True(register >= 0 && reserve > register, string.Join(", ", after.Take(12)));
        Assert.True(firstWrite > reserve, string.Join(", ", after.Take(12)));
        Assert.Equal(HostA, IscsiBlockDevice.ReadReservation(url, new IscsiOptions())!.Value.Key);

        // The writes that were on the wire when the target went away were sent again by the session,
        // after the re-take above (they are among the writes counted there), not by libiscsi's own
        // reconnect straight after the login.
        Assert.True(device.Session.Resent > 0, "no write was in flight at the restart, or libiscsi re-sent them itself");
    }
}
