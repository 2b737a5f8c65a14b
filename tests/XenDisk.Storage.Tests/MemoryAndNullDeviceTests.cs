namespace XenDisk.Storage.Tests;

public class MemoryAndNullDeviceTests
{
    [Fact]
    public void Memory_contents_show_what_was_written()
    {
        using var device = new MemoryBlockDevice(64 * 1024);
        Assert.True(device.CompletesInline);
        Assert.Equal(IoStatus.Ok, device.WriteAt(4096, [1, 2, 3, .. new byte[509]]));
        Assert.Equal(new byte[] { 1, 2, 3 }, device.Contents.Slice(4096, 3).ToArray());
        Assert.Equal(0, device.Contents[4095]);
    }

    [Fact]
    public unsafe void Memory_is_page_aligned()
    {
        using var device = new MemoryBlockDevice(8192);
        fixed (byte* start = device.Contents)
        {
            Assert.Equal(0, (nint)start % 4096);
        }
    }

    [Fact]
    public void Memory_resize_changes_storage_at_once_and_info_on_refresh()
    {
        using var device = new MemoryBlockDevice(8192, logicalSectorSize: 4096);
        Assert.Equal(IoStatus.Ok, device.WriteAt(4096, Enumerable.Repeat((byte)7, 4096).ToArray()));

        device.Resize(16384);
        Assert.Equal(8192, device.Info.SizeBytes);
        Assert.Equal(16384, device.StorageSize);
        Assert.Equal(16384, device.Refresh().SizeBytes);
        Assert.Equal(16384, device.Info.SizeBytes);
        Assert.All(device.Contents.Slice(4096, 4096).ToArray(), b => Assert.Equal(7, b));
        Assert.All(device.Contents.Slice(8192).ToArray(), b => Assert.Equal(0, b));

        // Shrinking: I/O is checked against the storage even before Info catches up.
        device.Resize(4096);
        Assert.Equal(IoStatus.OutOfRange, device.ReadAt(4096, new byte[4096]));
        Assert.Equal(4096, device.Refresh().SizeBytes);
    }

    [Fact]
    public void Memory_geometry_is_validated()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new MemoryBlockDevice(1000));
        Assert.Throws<ArgumentOutOfRangeException>(() => new MemoryBlockDevice(8192, logicalSectorSize: 1000));
        Assert.Throws<ArgumentOutOfRangeException>(() => new MemoryBlockDevice(8192, logicalSectorSize: 4096, physicalSectorSize: 512));
        using var device = new MemoryBlockDevice(8192, logicalSectorSize: 512, physicalSectorSize: 4096);
        Assert.Equal(4096, device.Info.PhysicalSectorSize);
        Assert.Throws<ArgumentOutOfRangeException>(() => device.Resize(1000));
    }

    [Fact]
    public void Null_device_leaves_read_buffers_untouched_and_drops_writes()
    {
        using var device = new NullBlockDevice(1024 * 1024);
        Assert.True(device.CompletesInline);
        Assert.Equal(IoStatus.Ok, device.WriteAt(0, Enumerable.Repeat((byte)1, 4096).ToArray()));
        byte[] buffer = Enumerable.Repeat((byte)0xEE, 4096).ToArray();
        Assert.Equal(IoStatus.Ok, device.ReadAt(0, buffer));
        Assert.All(buffer, b => Assert.Equal(0xEE, b));
        Assert.Equal(IoStatus.Ok, device.Flush());
        Assert.Equal(IoStatus.Ok, device.Discard(0, 4096, secure: true));
        Assert.False(device.Info.DiscardZeroes);
    }

    [Fact]
    public void Null_device_still_refuses_bad_ranges_and_read_only_writes()
    {
        using var device = new NullBlockDevice(8192, readOnly: true);
        Assert.Equal(IoStatus.OutOfRange, device.ReadAt(8192, new byte[512]));
        Assert.Equal(IoStatus.OutOfRange, device.ReadAt(100, new byte[512]));
        Assert.Equal(IoStatus.ReadOnly, device.WriteAt(0, new byte[512]));
        Assert.Equal(IoStatus.ReadOnly, device.Discard(0, 512, secure: false));
    }
}
