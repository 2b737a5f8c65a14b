using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Tests.Bitmap.Support;
using XenDisk.Cow.Tests.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Bitmap;

/// <summary>Random seeded workloads against an in-memory model, over memory, files and loop devices, for every policy.</summary>
public sealed class BitmapWorkloadTests
{
    private const int Operations = 300;

    public static TheoryData<BitmapDeviceKind, int, MetadataPolicy, bool> Cases()
    {
        var data = new TheoryData<BitmapDeviceKind, int, MetadataPolicy, bool>();
        foreach (int grain in new[] { 512, 4096, 65536 })
        {
            foreach (MetadataPolicy policy in Enum.GetValues<MetadataPolicy>())
            {
                data.Add(BitmapDeviceKind.Memory, grain, policy, grain == 4096);
            }
        }
        data.Add(BitmapDeviceKind.Files, 4096, MetadataPolicy.Flush, false);
        data.Add(BitmapDeviceKind.Files, 4096, MetadataPolicy.Sync, true);
        data.Add(BitmapDeviceKind.Files, 512, MetadataPolicy.Lazy, false);
        data.Add(BitmapDeviceKind.Files, 65536, MetadataPolicy.Transient, false);
        data.Add(BitmapDeviceKind.Loop, 4096, MetadataPolicy.Flush, false);
        data.Add(BitmapDeviceKind.Loop, 512, MetadataPolicy.Sync, false);
        data.Add(BitmapDeviceKind.Loop4K, 4096, MetadataPolicy.Lazy, true);
        data.Add(BitmapDeviceKind.Loop4K, 16384, MetadataPolicy.Flush, false);
        return data;
    }

    [Trait(Needs.Key, Needs.Root)]
    [Trait(Needs.Key, Needs.Loop)]
    [Theory]
    [MemberData(nameof(Cases))]
    public void Random_workload_reads_back_like_the_model_and_survives_reopening(BitmapDeviceKind kind, int grain, MetadataPolicy policy, bool largerThanBase)
    {
        int sector = kind == BitmapDeviceKind.Loop4K ? 4096 : 512;
        // Not a whole number of 64 KiB grains, so the last grain is partial for the largest grains.
        long baseSize = 2 * 1024 * 1024 + 3 * sector;
        long virtualSize = largerThanBase ? baseSize + 50 * sector : baseSize;
        int seed = HashCode.Combine(kind, grain, policy) & 0x7fff_ffff;
        using BitmapDisks disks = BitmapDisks.Create(kind, baseSize, BitmapOverlay.RequiredCowSize(virtualSize, grain), seed);
        var options = new BitmapOverlayOptions { Policy = policy, OwnsDevices = false };
        var model = new DiskModel(DiskModel.Extend(disks.BaseContents, virtualSize), sector, grain, seed);

        using (BitmapOverlay overlay = BitmapOverlay.Create(disks.Cow, disks.Base, new BitmapCreateOptions { GrainSize = grain, VirtualSize = virtualSize }, options))
        {
            Assert.Equal(virtualSize, overlay.Info.SizeBytes);
            Assert.Equal(sector, overlay.Info.LogicalSectorSize);
            model.Run(overlay, Operations);
            model.Verify(overlay);
        }
        Assert.Equal(disks.BaseContents, disks.ReadBase());

        disks.ReopenCow();
        if (policy == MetadataPolicy.Transient)
        {
            var refused = Assert.Throws<StorageException>(() => BitmapOverlay.Open(disks.Cow, disks.Base, options with { Policy = MetadataPolicy.Flush }));
            Assert.Contains("transient", refused.Message, StringComparison.Ordinal);
            return;
        }
        Assert.True(BitmapChecker.Check(disks.Cow).IsClean);
        using (BitmapOverlay reopened = BitmapOverlay.Open(disks.Cow, disks.Base, options))
        {
            Assert.False(reopened.OpenedAfterUncleanShutdown);
            model.Verify(reopened);
            // More work after reopening lands on top of what was there.
            model.Run(reopened, Operations / 3);
            model.Verify(reopened);
        }
        Assert.Equal(disks.BaseContents, disks.ReadBase());
        Assert.False(BitmapOverlay.ReadHeader(disks.Cow).IsDirty);
    }

    [Theory]
    [InlineData(512)]
    [InlineData(4096)]
    [InlineData(65536)]
    public void Scatter_lists_with_many_odd_buffers_read_and_write_like_one_buffer(int grain)
    {
        const long size = 1024 * 1024;
        using BitmapDisks disks = BitmapDisks.Create(BitmapDeviceKind.Memory, size, BitmapOverlay.RequiredCowSize(size, grain), seed: grain);
        using BitmapOverlay overlay = BitmapOverlay.Create(disks.Cow, disks.Base, new BitmapCreateOptions { GrainSize = grain }, new BitmapOverlayOptions { OwnsDevices = false });
        byte[] expected = (byte[])disks.BaseContents.Clone();
        var random = new Random(grain);
        for (int round = 0; round < 40; round++)
        {
            // 300 buffers (more than fit on the stack) of lengths that are multiples of 512 only in total.
            int count = 300;
            int total = count * 512;
            long offset = random.NextInt64((size - total) / 512) * 512;
            byte[] data = new byte[total];
            random.NextBytes(data);
            int[] lengths = SplitIntoPieces(total, count, random);
            WriteScattered(overlay, offset, data, lengths);
            data.CopyTo(expected, offset);
            byte[] read = ReadScattered(overlay, offset, total, SplitIntoPieces(total, count, random));
            DiskModel.AssertSame(expected.AsSpan((int)offset, total), read, offset);
        }
        byte[] all = new byte[size];
        Assert.Equal(IoStatus.Ok, overlay.ReadAt(0, all));
        DiskModel.AssertSame(expected, all, 0);
    }

    [Fact]
    public void Out_of_range_and_misaligned_requests_are_refused_without_touching_anything()
    {
        const long size = 1024 * 1024;
        using BitmapDisks disks = BitmapDisks.Create(BitmapDeviceKind.Memory, size, BitmapOverlay.RequiredCowSize(size), seed: 5);
        using BitmapOverlay overlay = BitmapOverlay.Create(disks.Cow, disks.Base, options: new BitmapOverlayOptions { OwnsDevices = false });
        byte[] buffer = new byte[4096];
        Assert.Equal(IoStatus.OutOfRange, overlay.WriteAt(size - 512, buffer));
        Assert.Equal(IoStatus.OutOfRange, overlay.WriteAt(-512, buffer));
        Assert.Equal(IoStatus.OutOfRange, overlay.WriteAt(100, buffer));
        Assert.Equal(IoStatus.OutOfRange, overlay.ReadAt(size, buffer));
        Assert.Equal(IoStatus.OutOfRange, overlay.ReadAt(long.MaxValue - 100, buffer));
        Assert.Equal(IoStatus.OutOfRange, overlay.Discard(size - 512, 1024, secure: false));
        Assert.Equal(IoStatus.OutOfRange, overlay.Discard(512, long.MaxValue, secure: false));
        Assert.Equal(IoStatus.NotSupported, overlay.Discard(0, 4096, secure: true));
        Assert.Equal(size, overlay.CountGrains().Base * 4096);
    }

    [Fact]
    public void A_read_only_overlay_refuses_writes_and_discards_and_writes_nothing()
    {
        const long size = 1024 * 1024;
        using BitmapDisks disks = BitmapDisks.Create(BitmapDeviceKind.Memory, size, BitmapOverlay.RequiredCowSize(size), seed: 6);
        var options = new BitmapOverlayOptions { OwnsDevices = false };
        using (BitmapOverlay overlay = BitmapOverlay.Create(disks.Cow, disks.Base, options: options))
        {
            Assert.Equal(IoStatus.Ok, overlay.WriteAt(8192, new byte[4096]));
        }
        var recording = new CrashRecorder(disks.Cow);
        using (BitmapOverlay readOnly = BitmapOverlay.Open(recording, disks.Base, options with { ReadOnly = true }))
        {
            Assert.True(readOnly.Info.ReadOnly);
            Assert.Equal(IoStatus.ReadOnly, readOnly.WriteAt(0, new byte[512]));
            Assert.Equal(IoStatus.ReadOnly, readOnly.Discard(0, 4096, secure: false));
            byte[] read = new byte[4096];
            Assert.Equal(IoStatus.Ok, readOnly.ReadAt(8192, read));
            Assert.All(read, b => Assert.Equal(0, b));
            Assert.Equal(IoStatus.Ok, readOnly.Flush());
        }
        Assert.Equal(0, recording.Position);
    }

    [Fact]
    public void Map_memory_is_a_quarter_byte_per_grain()
    {
        Assert.Equal(64 * 1024, BitmapFormat.MapBytesPerGiB(4096));
        Assert.Equal(512 * 1024, BitmapFormat.MapBytesPerGiB(512));
        Assert.Equal(4 * 1024, BitmapFormat.MapBytesPerGiB(65536));
        const long size = 64L * 1024 * 1024;
        using var cow = new MemoryBlockDevice(BitmapOverlay.RequiredCowSize(size));
        using var baseDevice = new MemoryBlockDevice(size);
        using BitmapOverlay overlay = BitmapOverlay.Create(cow, baseDevice, options: new BitmapOverlayOptions { OwnsDevices = false });
        // 16384 grains: 4096 bytes of map plus one dirty marker per map block.
        Assert.Equal(4096 + 1, overlay.MapMemoryBytes);
    }

    private static int[] SplitIntoPieces(int total, int count, Random random)
    {
        int[] lengths = new int[count];
        int remaining = total;
        for (int i = 0; i < count - 1; i++)
        {
            int most = remaining - (count - 1 - i);
            lengths[i] = Math.Clamp(1 + random.Next(2 * total / count), 1, most);
            remaining -= lengths[i];
        }
        lengths[^1] = remaining;
        return lengths;
    }

    private static unsafe void WriteScattered(IBlockDevice device, long offset, byte[] data, int[] lengths)
    {
        fixed (byte* pointer = data)
        {
            IoBuffer[] buffers = new IoBuffer[lengths.Length];
            int at = 0;
            for (int i = 0; i < lengths.Length; i++)
            {
                buffers[i] = new IoBuffer((nint)(pointer + at), lengths[i]);
                at += lengths[i];
            }
            Assert.Equal(IoStatus.Ok, device.Write(offset, buffers));
        }
    }

    private static unsafe byte[] ReadScattered(IBlockDevice device, long offset, int total, int[] lengths)
    {
        byte[] data = new byte[total];
        fixed (byte* pointer = data)
        {
            IoBuffer[] buffers = new IoBuffer[lengths.Length];
            int at = 0;
            for (int i = 0; i < lengths.Length; i++)
            {
                buffers[i] = new IoBuffer((nint)(pointer + at), lengths[i]);
                at += lengths[i];
            }
            Assert.Equal(IoStatus.Ok, device.Read(offset, buffers));
        }
        return data;
    }
}
