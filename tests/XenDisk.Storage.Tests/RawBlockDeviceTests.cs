using XenDisk.Storage.Tests.Support;

namespace XenDisk.Storage.Tests;

/// <summary>What is particular to files and block devices: direct versus buffered I/O, options, bounce buffers.</summary>
public class RawBlockDeviceTests
{
    [Fact]
    public void A_file_on_the_real_disk_uses_direct_io()
    {
        using TestDisk disk = TestDisk.Create(DeviceKind.DiskFile);
        var raw = Assert.IsType<RawBlockDevice>(disk.Device);
        Assert.True(raw.UsesDirectIo);
        Assert.False(raw.IsBlockDevice);
        Assert.False(raw.CompletesInline);
        Assert.Contains("direct I/O", raw.Info.Description, StringComparison.Ordinal);
    }

    [Trait(Needs.Key, Needs.Root)]
    [Fact]
    public void A_file_system_that_refuses_O_DIRECT_falls_back_to_buffered_io_and_says_so()
    {
        using TestDisk disk = TestDisk.Create(DeviceKind.RamfsFile);
        var raw = Assert.IsType<RawBlockDevice>(disk.Device);
        Assert.False(raw.UsesDirectIo);
        Assert.Contains("buffered: the file system refused O_DIRECT", raw.Info.Description, StringComparison.Ordinal);

        // Buffered I/O never bounces, whatever the alignment.
        using var buffers = new NativeBuffers([1000, 24], misalignment: 3);
        buffers.Fill(Patterns.Bytes(1024, seed: 1));
        Assert.Equal(IoStatus.Ok, raw.Write(0, buffers.Buffers));
        Assert.Equal(0, raw.BouncedTransfers);
    }

    [Fact]
    public void A_tmpfs_file_reports_the_io_mode_it_actually_got()
    {
        // tmpfs accepts O_DIRECT since Linux 6.6 and refused it before; either way the description must tell the truth.
        using TestDisk disk = TestDisk.Create(DeviceKind.TmpfsFile);
        var raw = Assert.IsType<RawBlockDevice>(disk.Device);
        Assert.Contains(raw.UsesDirectIo ? "(direct I/O)" : "buffered:", raw.Info.Description, StringComparison.Ordinal);
    }

    [Trait(Needs.Key, Needs.Root)]
    [Trait(Needs.Key, Needs.Loop)]
    [Fact]
    public void Loop_devices_are_block_devices_with_direct_io()
    {
        using TestDisk disk = TestDisk.Create(DeviceKind.LoopDevice4K);
        var raw = Assert.IsType<RawBlockDevice>(disk.Device);
        Assert.True(raw.IsBlockDevice);
        Assert.True(raw.UsesDirectIo);
        Assert.StartsWith("raw block device /dev/loop", raw.Info.Description, StringComparison.Ordinal);
        Assert.Equal(4096, raw.Info.LogicalSectorSize);
        Assert.False(raw.Info.DiscardZeroes);
    }

    [Fact]
    public void Buffered_io_can_be_asked_for()
    {
        using TestDisk disk = TestDisk.Create(DeviceKind.DiskFile);
        using var raw = RawBlockDevice.Open(disk.ImagePath!, readOnly: false, new RawDeviceOptions { DirectIo = false });
        Assert.False(raw.UsesDirectIo);
        Assert.Contains("buffered: direct I/O not requested", raw.Info.Description, StringComparison.Ordinal);
        byte[] data = Patterns.Bytes(4096, seed: 2);
        Assert.Equal(IoStatus.Ok, raw.WriteAt(512, data));
        byte[] readBack = new byte[4096];
        Assert.Equal(IoStatus.Ok, disk.Device.ReadAt(512, readBack));
        Assert.Equal(data, readBack);
    }

    [Fact]
    public void A_file_can_present_4096_byte_sectors_and_then_refuses_512_byte_requests()
    {
        using TestDisk disk = TestDisk.Create(DeviceKind.DiskFile);
        using var raw = RawBlockDevice.Open(disk.ImagePath!, readOnly: false, new RawDeviceOptions { FileLogicalSectorSize = 4096 });
        Assert.Equal(4096, raw.Info.LogicalSectorSize);
        Assert.Equal(4096, raw.Info.PhysicalSectorSize);
        Assert.Equal(IoStatus.OutOfRange, raw.WriteAt(512, new byte[4096]));
        Assert.Equal(IoStatus.OutOfRange, raw.WriteAt(4096, new byte[512]));
        Assert.Equal(IoStatus.Ok, raw.WriteAt(4096, new byte[4096]));
    }

    [Fact]
    public void Files_whose_size_is_not_whole_sectors_end_at_the_last_whole_sector()
    {
        using TestDisk disk = TestDisk.Create(DeviceKind.DiskFile);
        Assert.Equal(TestDisk.DefaultSize + TestDisk.SentinelLength, disk.ImageLength);
        Assert.Equal(TestDisk.DefaultSize, disk.Device.Info.SizeBytes);
    }

    [Trait(Needs.Key, Needs.Root)]
    [Trait(Needs.Key, Needs.Loop)]
    [Fact]
    public void A_shared_bounce_pool_is_used_and_every_buffer_comes_back()
    {
        using TestDisk disk = TestDisk.Create(DeviceKind.LoopDevice4K);
        using var pool = new AlignedBufferPool(bufferSize: 8192, capacity: 1);
        using var raw = RawBlockDevice.Open(disk.DevicePath!, readOnly: false, new RawDeviceOptions { BouncePool = pool });

        // 512-byte buffers on a 4 KiB-sector device must bounce; 32 KiB goes through the 8 KiB buffer in four chunks.
        int[] lengths = Enumerable.Repeat(512, 64).ToArray();
        byte[] data = Patterns.Bytes(32768, seed: 4);
        using var source = new NativeBuffers(lengths);
        source.Fill(data);
        Assert.Equal(IoStatus.Ok, raw.Write(4096, source.Buffers));
        using var target = new NativeBuffers(lengths);
        Assert.Equal(IoStatus.Ok, raw.Read(4096, target.Buffers));

        Assert.Equal(data, target.Concatenate());
        Assert.Equal(2, raw.BouncedTransfers);
        Assert.Equal(0, pool.RentedCount);
    }

    [Trait(Needs.Key, Needs.Root)]
    [Trait(Needs.Key, Needs.Loop)]
    [Fact]
    public void A_bounce_pool_whose_buffers_are_not_whole_sectors_is_refused()
    {
        using TestDisk disk = TestDisk.Create(DeviceKind.LoopDevice);
        using var pool = new AlignedBufferPool(bufferSize: 4096, capacity: 1);
        // 4096 is a multiple of 512, so this loop device accepts it...
        using (RawBlockDevice.Open(disk.DevicePath!, readOnly: true, new RawDeviceOptions { BouncePool = pool }))
        {
        }
        // ...but a file presenting 8 KiB sectors cannot bounce through 4 KiB.
        using TestDisk file = TestDisk.Create(DeviceKind.DiskFile);
        Assert.Throws<ArgumentException>(() => RawBlockDevice.Open(file.ImagePath!, readOnly: true,
            new RawDeviceOptions { BouncePool = pool, FileLogicalSectorSize = 8192 }));
    }

    [Trait(Needs.Key, Needs.Root)]
    [Trait(Needs.Key, Needs.Loop)]
    [Fact]
    public void Refresh_keeps_the_previous_info_object_when_nothing_changed()
    {
        using TestDisk disk = TestDisk.Create(DeviceKind.LoopDevice);
        BlockDeviceInfo before = disk.Device.Info;
        Assert.Same(before, disk.Device.Refresh());
    }
}
