using System.Diagnostics;
using System.Runtime.InteropServices;
using Tmds.Linux;
using XenDisk.Storage.Iscsi;
using XenDisk.TestSupport.Iscsi;
using static Tmds.Linux.LibC;

namespace XenDisk.Storage.Tests.Iscsi;

/// <summary>
/// A ring's own queue on an iSCSI LUN (<see cref="IscsiQueue"/>), driven by an event loop of the test's
/// own (<see cref="QueueLoop"/>: poll(2) on the queue's descriptors, as the ring waits on them in its
/// io_uring) against a real target.
/// </summary>
[Trait(Needs.Key, Needs.Tgtd)]
public sealed unsafe class IscsiQueueTests
{
    private const long Size = 64L << 20;
    private const int Block = 4096;

    private static readonly IscsiOptions Options = new() { CommandTimeout = TimeSpan.FromSeconds(20) };

    [TgtdFact]
    public void Reads_writes_and_flushes_run_on_the_queue_and_never_on_the_devices_session()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        using IscsiBlockDevice device = IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url()), readOnly: false, Options);
        int blocking = 0;
        device.Session.Issued = (_, _) => Interlocked.Increment(ref blocking);
        using QueueLoop loop = new(device, slots: 32);
        int queued = 0;
        ((IscsiQueue)loop.Queue).Session.Issued = (_, _) => queued++;

        // 32 writes at once, each of two buffers (the iovec path), then a flush, then every block read back.
        for (int i = 0; i < 32; i++)
        {
            loop.Fill(i, IscsiBlockDeviceTests.Pattern(2 * Block, seed: 100 + i));
            Assert.True(loop.Submit(i, PolledOperation.Write, (long)i * 2 * Block, split: true));
        }
        loop.RunUntilAnswered(TimeSpan.FromSeconds(60), "a write was never answered");
        Assert.True(loop.Submit(0, PolledOperation.Flush, 0, split: false));
        loop.RunUntilAnswered(TimeSpan.FromSeconds(60), "the flush was never answered");
        for (int i = 0; i < 32; i++)
        {
            loop.Clear(i);
            Assert.True(loop.Submit(i, PolledOperation.Read, (long)i * 2 * Block, split: false));
        }
        loop.RunUntilAnswered(TimeSpan.FromSeconds(60), "a read was never answered");
        for (int i = 0; i < 32; i++)
        {
            Assert.Equal(IoStatus.Ok, loop.Status(i));
            Assert.Equal(IscsiBlockDeviceTests.Pattern(2 * Block, seed: 100 + i), loop.Data(i));
        }

        // What the guest wrote is in the LUN's file, and every command went through the queue's own session.
        using (FileStream file = new(rig.LunPath(1), FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
        {
            byte[] onFile = new byte[2 * Block];
            file.Position = 5L * 2 * Block;
            file.ReadExactly(onFile);
            Assert.Equal(IscsiBlockDeviceTests.Pattern(2 * Block, seed: 105), onFile);
        }
        Assert.Equal(32 + 1 + 32, queued);
        Assert.Equal(0, Volatile.Read(ref blocking));
    }

    [TgtdFact]
    public void What_the_queue_cannot_do_in_one_command_is_declined_for_the_blocking_path()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        using IscsiBlockDevice device = IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url()), readOnly: false, Options);
        using QueueLoop loop = new(device, slots: 2);
        // Past the end, not whole sectors, and discard on a LUN without UNMAP: the blocking calls answer those.
        Assert.False(loop.Submit(0, PolledOperation.Read, Size, split: false));
        Assert.False(loop.Queue.TrySubmit(1, PolledOperation.Write, 100, Block, loop.Buffers(0, split: false)));
        Assert.False(loop.Queue.TrySubmit(1, PolledOperation.Discard, 0, Block, []));
        using IscsiBlockDevice reader = IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url()), readOnly: true, Options);
        using QueueLoop readOnly = new(reader, slots: 1);
        Assert.False(readOnly.Submit(0, PolledOperation.Write, 0, split: false));
        Assert.False(readOnly.Submit(0, PolledOperation.Flush, 0, split: false));
    }

    [TgtdFact]
    public void A_target_restarted_during_queued_io_answers_every_request_and_keeps_the_data() => WriteThroughARestart(Options);

    [TgtdFact]
    public void A_reserved_lun_restarted_during_queued_io_is_taken_again_before_the_lost_writes_go_again()
    {
        WriteThroughARestart(Options with { ReservationKey = 0xa1, InitiatorName = "iqn.2026-12.org.xendisk.test:host-a" });
    }

    /// <summary>
    /// 400 writes of 8 KiB, 16 in flight, through the queue; the target is killed and started again
    /// halfway. Every write is answered Ok and is in the LUN. With a reservation key, the queue's own
    /// session re-sends the writes the drop took (never libiscsi straight after the login) and the
    /// host holds the LUN afterwards.
    /// </summary>
    private static void WriteThroughARestart(IscsiOptions options)
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        IscsiUrl url = IscsiUrl.Parse(rig.Url());
        using IscsiBlockDevice device = IscsiBlockDevice.Open(url, readOnly: false, options);
        using QueueLoop loop = new(device, slots: 16);
        IscsiSession session = ((IscsiQueue)loop.Queue).Session;
        const int Writes = 400;
        int next = 0;
        var results = new IoStatus[Writes];
        var written = new int[loop.Slots];
        Stopwatch clock = Stopwatch.StartNew();
        bool restarted = false;
        int answered = 0;
        loop.Answered = (slot, status) =>
        {
            results[written[slot]] = status;
            answered++;
        };

        // Keep 16 writes in flight; once half are answered, kill the target and start it again.
        while (answered < Writes)
        {
            for (int slot = 0; slot < loop.Slots && next < Writes; slot++)
            {
                if (!loop.Busy(slot))
                {
                    written[slot] = next;
                    loop.Fill(slot, IscsiBlockDeviceTests.Pattern(2 * Block, seed: next));
                    Assert.True(loop.Submit(slot, PolledOperation.Write, (long)next * 2 * Block, split: false));
                    next++;
                }
            }
            if (!restarted && answered >= Writes / 2)
            {
                rig.Target.Kill();
                rig.Target.Start();
                restarted = true;
            }
            loop.RunOnce();
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(120), $"{Writes - answered} writes never got their answer");
        }

        Assert.All(results, status => Assert.Equal(IoStatus.Ok, status));
        Assert.True(session.Reconnects >= 1);
        if (options.ReservationKey != 0)
        {
            Assert.True(session.Resent > 0, "no write was re-sent by the queue's session after the restart");
            Assert.Equal(options.ReservationKey, IscsiBlockDevice.ReadReservation(url, new IscsiOptions())!.Value.Key);
        }
        Assert.Equal(IoStatus.Ok, device.Flush());
        for (int i = 0; i < Writes; i++)
        {
            byte[] back = new byte[2 * Block];
            Assert.Equal(IoStatus.Ok, device.ReadAt((long)i * 2 * Block, back));
            Assert.Equal(IscsiBlockDeviceTests.Pattern(2 * Block, seed: i), back);
        }
    }

    [TgtdFact]
    public void A_queue_on_a_reserved_lun_writes_as_a_registrant_and_leaves_the_reservation_when_it_closes()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        IscsiUrl url = IscsiUrl.Parse(rig.Url());
        IscsiOptions host = Options with { ReservationKey = 0xa1, InitiatorName = "iqn.2026-12.org.xendisk.test:host-a" };
        using IscsiBlockDevice device = IscsiBlockDevice.Open(url, readOnly: false, host);
        using (QueueLoop loop = new(device, slots: 4))
        {
            for (int i = 0; i < 4; i++)
            {
                loop.Fill(i, IscsiBlockDeviceTests.Pattern(2 * Block, seed: 7 + i));
                Assert.True(loop.Submit(i, PolledOperation.Write, (long)i * 2 * Block, split: false));
            }
            loop.RunUntilAnswered(TimeSpan.FromSeconds(60), "a write was never answered");
            for (int i = 0; i < 4; i++)
            {
                // A conflict here would mean the queue's nexus wrote without being registered.
                Assert.Equal(IoStatus.Ok, loop.Status(i));
            }
        }
        // Closing the queue removed its own registration only: the host still holds the LUN and writes.
        Assert.Equal(0xa1ul, IscsiBlockDevice.ReadReservation(url, new IscsiOptions())!.Value.Key);
        Assert.Equal(IoStatus.Ok, device.WriteAt(1 << 20, IscsiBlockDeviceTests.Pattern(Block, seed: 3)));
        byte[] back = new byte[2 * Block];
        Assert.Equal(IoStatus.Ok, device.ReadAt(2 * Block, back));
        Assert.Equal(IscsiBlockDeviceTests.Pattern(2 * Block, seed: 8), back);
    }

    /// <summary>
    /// The event loop of a test: requests in fixed slots over pinned buffers, completions recorded per
    /// slot, and waits in poll(2) on the queue's socket (with the events it asks for), its wake-up
    /// descriptor and its timer, as the ring's loop does with its io_uring.
    /// </summary>
    private sealed class QueueLoop : IPolledCompletion, IDisposable
    {
        private readonly byte[][] _data;
        private readonly GCHandle[] _pins;
        private readonly IoStatus[] _status;
        private readonly bool[] _busy;
        private int _inFlight;

        public QueueLoop(IPolledBlockDevice device, int slots)
        {
            Slots = slots;
            _data = new byte[slots][];
            _pins = new GCHandle[slots];
            for (int i = 0; i < slots; i++)
            {
                _data[i] = new byte[2 * Block];
                _pins[i] = GCHandle.Alloc(_data[i], GCHandleType.Pinned);
            }
            _status = new IoStatus[slots];
            _busy = new bool[slots];
            Queue = device.OpenQueue(this);
        }

        public int Slots { get; }

        public IPolledQueue Queue { get; }

        public Action<int, IoStatus>? Answered { get; set; }

        public void Fill(int slot, byte[] data) => data.CopyTo(_data[slot], 0);

        public void Clear(int slot) => Array.Clear(_data[slot]);

        public byte[] Data(int slot) => (byte[])_data[slot].Clone();

        public IoStatus Status(int slot) => _status[slot];

        public bool Busy(int slot) => _busy[slot];

        public IoBuffer[] Buffers(int slot, bool split)
        {
            nint address = _pins[slot].AddrOfPinnedObject();
            return split ? [new IoBuffer(address, Block), new IoBuffer(address + Block, Block)] : [new IoBuffer(address, 2 * Block)];
        }

        public bool Submit(int slot, PolledOperation operation, long offset, bool split)
        {
            bool data = operation is PolledOperation.Read or PolledOperation.Write;
            _busy[slot] = true;
            _inFlight++;
            if (Queue.TrySubmit(slot, operation, offset, data ? 2 * Block : 0, data ? Buffers(slot, split) : []))
            {
                return true;
            }
            _busy[slot] = false;
            _inFlight--;
            return false;
        }

        void IPolledCompletion.Completed(int tag, IoStatus status)
        {
            Assert.True(_busy[tag], $"slot {tag} was answered twice");
            _busy[tag] = false;
            _status[tag] = status;
            _inFlight--;
            Answered?.Invoke(tag, status);
        }

        public void RunUntilAnswered(TimeSpan limit, string hang)
        {
            Stopwatch clock = Stopwatch.StartNew();
            while (_inFlight > 0)
            {
                RunOnce();
                Assert.True(clock.Elapsed < limit, hang);
            }
        }

        /// <summary>One turn: write out what was started, wait for the socket, the wake-up or the timer, service the queue.</summary>
        public void RunOnce()
        {
            Queue.PrepareToWait();
            pollfd* fds = stackalloc pollfd[2];
            int events = Queue.Events;
            fds[0] = new pollfd { fd = events != 0 ? Queue.FileDescriptor : -1, events = (short)events };
            fds[1] = new pollfd { fd = Queue.WakeDescriptor, events = POLLIN };
            int timer = Queue.TimerMilliseconds;
            poll(fds, 2, timer == Timeout.Infinite ? 1000 : timer);
            Queue.Service(fds[0].fd >= 0 ? fds[0].revents : 0, woken: fds[1].revents != 0);
        }

        public void Dispose()
        {
            Queue.Dispose();
            foreach (GCHandle pin in _pins)
            {
                pin.Free();
            }
        }
    }
}
