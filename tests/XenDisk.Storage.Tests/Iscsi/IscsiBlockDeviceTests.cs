using System.Runtime.InteropServices;
using XenDisk.Storage.Iscsi;
using XenDisk.TestSupport.Iscsi;

namespace XenDisk.Storage.Tests.Iscsi;

/// <summary>The iSCSI device against a real target (tgtd on 127.0.0.1 over files).</summary>
[Trait(Needs.Key, Needs.Tgtd)]
public sealed unsafe class IscsiBlockDeviceTests
{
    private const long Size = 64L << 20;

    private static readonly IscsiOptions Options = new() { CommandTimeout = TimeSpan.FromSeconds(20) };

    [TgtdFact]
    public void Reports_the_lun_capacity_and_geometry()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        using IscsiBlockDevice device = IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url()), readOnly: false, Options);
        Assert.Equal(Size, device.Info.SizeBytes);
        Assert.Equal(512, device.Info.LogicalSectorSize);
        // tgt reports 8 logical blocks per physical block (READ CAPACITY (16) exponent 3).
        Assert.Equal(4096, device.Info.PhysicalSectorSize);
        Assert.False(device.Info.SupportsDiscard);
        Assert.Equal(IoStatus.NotSupported, device.Discard(0, 4096, secure: false));
        Assert.Contains(rig.Url(), device.Info.Description, StringComparison.Ordinal);
    }

    [TgtdFact]
    public void Scattered_writes_reach_the_lun_file_and_read_back()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        using IscsiBlockDevice device = IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url()), readOnly: false, Options);
        // Three buffers of unequal sizes, one write: the iovec path.
        int[] lengths = [4096, 512, 12288];
        byte[][] data = lengths.Select((l, i) => Pattern(l, seed: i + 1)).ToArray();
        GCHandle[] pins = data.Select(d => GCHandle.Alloc(d, GCHandleType.Pinned)).ToArray();
        try
        {
            IoBuffer[] buffers = data.Select((d, i) => new IoBuffer(pins[i].AddrOfPinnedObject(), d.Length)).ToArray();
            Assert.Equal(IoStatus.Ok, device.Write(1 << 20, buffers));
            Assert.Equal(IoStatus.Ok, device.Flush());
        }
        finally
        {
            foreach (GCHandle pin in pins)
            {
                pin.Free();
            }
        }
        byte[] expected = data.SelectMany(d => d).ToArray();
        byte[] onFile = new byte[expected.Length];
        using (FileStream file = new(rig.LunPath(1), FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
        {
            file.Position = 1 << 20;
            file.ReadExactly(onFile);
        }
        Assert.Equal(expected, onFile);
        byte[] back = new byte[expected.Length];
        Assert.Equal(IoStatus.Ok, device.ReadAt(1 << 20, back));
        Assert.Equal(expected, back);
    }

    [TgtdFact]
    public void Reads_what_was_in_the_file_before_the_target_started()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        byte[] content = Pattern(1 << 20, seed: 9);
        using (FileStream file = new(rig.LunPath(1), FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
        {
            file.Position = Size - content.Length;
            file.Write(content);
        }
        using IscsiBlockDevice device = IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url()), readOnly: true, Options);
        byte[] back = new byte[content.Length];
        Assert.Equal(IoStatus.Ok, device.ReadAt(Size - content.Length, back));
        Assert.Equal(content, back);
        Assert.Equal(IoStatus.ReadOnly, device.WriteAt(0, back.AsSpan(0, 512)));
    }

    [TgtdFact]
    public void Refuses_ranges_outside_the_lun_without_sending_them()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        using IscsiBlockDevice device = IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url()), readOnly: false, Options);
        byte[] block = new byte[4096];
        Assert.Equal(IoStatus.OutOfRange, device.ReadAt(Size - 512, block));
        Assert.Equal(IoStatus.OutOfRange, device.WriteAt(-512, block));
        Assert.Equal(IoStatus.OutOfRange, device.ReadAt(100, block));
        Assert.Equal(IoStatus.OutOfRange, device.ReadAt(0, block.AsSpan(0, 100)));
        Assert.Equal(IoStatus.Ok, device.ReadAt(Size - 4096, block));
    }

    [TgtdFact]
    public void Large_transfers_are_cut_into_commands_and_still_land_in_order()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        using IscsiBlockDevice device = IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url()), readOnly: false, Options);
        // 20 MiB in 300 buffers: more than one command's segment limit and transfer limit.
        byte[] data = Pattern(300 * 69632, seed: 3);
        fixed (byte* pointer = data)
        {
            nint start = (nint)pointer;
            IoBuffer[] buffers = Enumerable.Range(0, 300).Select(i => new IoBuffer(start + i * 69632, 69632)).ToArray();
            Assert.Equal(IoStatus.Ok, device.Write(4096, buffers));
        }
        byte[] back = new byte[data.Length];
        Assert.Equal(IoStatus.Ok, device.ReadAt(4096, back));
        Assert.True(data.AsSpan().SequenceEqual(back));
    }

    [TgtdFact]
    public void Many_threads_keep_many_commands_in_flight_and_every_byte_is_right()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        using IscsiBlockDevice device = IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url()), readOnly: false, Options);
        const int Threads = 16;
        const int Blocks = 64;
        Parallel.For(0, Threads, new ParallelOptions { MaxDegreeOfParallelism = Threads }, t =>
        {
            for (int round = 0; round < 3; round++)
            {
                for (int b = 0; b < Blocks; b++)
                {
                    long offset = ((long)t * Blocks + b) * 8192;
                    Assert.Equal(IoStatus.Ok, device.WriteAt(offset, Pattern(8192, seed: t * 1000 + b * 10 + round)));
                }
                for (int b = 0; b < Blocks; b++)
                {
                    long offset = ((long)t * Blocks + b) * 8192;
                    byte[] back = new byte[8192];
                    Assert.Equal(IoStatus.Ok, device.ReadAt(offset, back));
                    Assert.Equal(Pattern(8192, seed: t * 1000 + b * 10 + round), back);
                }
            }
        });
        Assert.Equal(IoStatus.Ok, device.Flush());
    }

    [TgtdFact]
    public void Unmap_is_offered_when_the_lun_advertises_it_and_deallocates()
    {
        using IscsiRig rig = IscsiRig.Start([Size], thin: true);
        using IscsiBlockDevice device = IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url()), readOnly: false, Options);
        Assert.True(device.Info.SupportsDiscard);
        Assert.True(device.Info.DiscardGranularity >= 512);
        Assert.Equal(0, device.Info.DiscardGranularity % 512);
        Assert.Equal(IoStatus.Ok, device.WriteAt(1 << 20, Pattern(1 << 20, seed: 5)));
        Assert.Equal(IoStatus.Ok, device.Flush());
        Assert.Equal(IoStatus.Ok, device.Discard(1 << 20, 1 << 20, secure: false));
        Assert.Equal(IoStatus.NotSupported, device.Discard(0, 4096, secure: true));
        byte[] back = new byte[1 << 20];
        Assert.Equal(IoStatus.Ok, device.ReadAt(1 << 20, back));
        Assert.True(device.Info.DiscardZeroes);
        Assert.False(back.AsSpan().ContainsAnyExcept((byte)0));
    }

    [TgtdFact]
    public void Refresh_sees_a_lun_that_grew()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        using IscsiBlockDevice device = IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url()), readOnly: false, Options);
        Assert.Equal(Size, device.Info.SizeBytes);
        // tgt has no resize command: grow the file, then stop and start the target over it, as an
        // operator would after growing a volume under a target that reads the size at start.
        rig.Target.Kill();
        using (FileStream file = new(rig.LunPath(1), FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
        {
            file.SetLength(2 * Size);
        }
        rig.Target.Start();
        BlockDeviceInfo refreshed = device.Refresh();
        Assert.Equal(2 * Size, refreshed.SizeBytes);
        Assert.Equal(2 * Size, device.Info.SizeBytes);
        Assert.Equal(IoStatus.Ok, device.WriteAt(2 * Size - 4096, Pattern(4096, 2)));
    }

    [TgtdFact]
    public void A_target_restarted_during_io_answers_every_request_and_keeps_the_data()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        using IscsiBlockDevice device = IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url()), readOnly: false, Options);
        const int Threads = 8;
        const int Writes = 200;
        IoStatus[,] results = rig.WriteThroughARestart(device, Threads, Writes, TimeSpan.FromSeconds(120), "a writer never got its answer");
        Assert.Equal(IoStatus.Ok, device.Flush());
        for (int t = 0; t < Threads; t++)
        {
            for (int i = 0; i < Writes; i++)
            {
                Assert.Equal(IoStatus.Ok, results[t, i]);
                byte[] back = new byte[4096];
                Assert.Equal(IoStatus.Ok, device.ReadAt(((long)t * Writes + i) * 4096, back));
                Assert.Equal(Pattern(4096, seed: t * Writes + i), back);
            }
        }
        Assert.True(device.Reconnects >= 1);
    }

    [TgtdFact]
    public void A_target_that_stays_down_fails_requests_with_an_io_error_instead_of_hanging()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        using IscsiBlockDevice device = IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url()), readOnly: false, Options with { CommandTimeout = TimeSpan.FromSeconds(2) });
        Assert.Equal(IoStatus.Ok, device.WriteAt(0, Pattern(4096, 1)));
        rig.Target.Kill();
        Task<IoStatus> write = Task.Run(() => device.WriteAt(0, Pattern(4096, 2)));
        Task<IoStatus> flush = Task.Run(device.Flush);
        Assert.True(Task.WaitAll([write, flush], TimeSpan.FromSeconds(60)), "a request hung while the target was down");
        Assert.Equal(IoStatus.IoError, write.Result);
        Assert.Equal(IoStatus.IoError, flush.Result);
    }

    internal static byte[] Pattern(int length, int seed)
    {
        byte[] data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }
}
