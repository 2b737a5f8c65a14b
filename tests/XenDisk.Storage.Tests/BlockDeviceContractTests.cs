using XenDisk.Storage.Tests.Support;

namespace XenDisk.Storage.Tests;

/// <summary>
/// The <see cref="IBlockDevice"/> contract, against every kind of device: raw storage, and the
/// copy-on-write overlays (qcow2 and bitmap) the backend serves guests from, which must keep it too.
/// </summary>
[Trait(Needs.Key, Needs.Root)]
[Trait(Needs.Key, Needs.Loop)]
[Trait(Needs.Key, Needs.Qemu)]
public class BlockDeviceContractTests
{
    public static TheoryData<DeviceKind> AllKinds => new(Enum.GetValues<DeviceKind>());

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Scatter_lists_of_different_lengths_read_back_equal_at_several_offsets(DeviceKind kind)
    {
        using TestDisk disk = TestDisk.Create(kind);
        IBlockDevice device = disk.Device;
        int[] lengths = [4096, 512, 8192, 1024, 2560];
        long size = device.Info.SizeBytes;
        long[] offsets = [0, 64 * 1024 + 4096, size - 16384];

        for (int i = 0; i < offsets.Length; i++)
        {
            byte[] data = Patterns.Bytes(16384, seed: i);
            using var source = new NativeBuffers(lengths);
            source.Fill(data);
            Assert.Equal(IoStatus.Ok, device.Write(offsets[i], source.Buffers));
        }
        for (int i = 0; i < offsets.Length; i++)
        {
            // Read back with a different layout, so a buffer-order bug cannot cancel itself out.
            using var target = new NativeBuffers([2048, 2048, 12288]);
            Assert.Equal(IoStatus.Ok, device.Read(offsets[i], target.Buffers));
            Assert.Equal(Patterns.Bytes(16384, seed: i), target.Concatenate());
        }
        // Untouched space between the writes still reads as zeros.
        byte[] gap = new byte[4096];
        Assert.Equal(IoStatus.Ok, device.ReadAt(32 * 1024, gap));
        Assert.All(gap, b => Assert.Equal(0, b));
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Data_lands_in_the_image_file_at_the_written_offset(DeviceKind kind)
    {
        using TestDisk disk = TestDisk.Create(kind);
        byte[] data = Patterns.Bytes(8192, seed: 7);
        Assert.Equal(IoStatus.Ok, disk.Device.WriteAt(1024 * 1024, data));
        Assert.Equal(IoStatus.Ok, disk.Device.Flush());

        if (disk.IsOverlay)
        {
            // An overlay stores the data in its own file and never in the base; the data survives a reopen.
            Assert.Equal(new byte[8192], ReadImage(disk.BasePath!, 1024 * 1024, 8192));
            using IBlockDevice reopened = disk.OpenAgain(readOnly: true);
            byte[] readBack = new byte[8192];
            Assert.Equal(IoStatus.Ok, reopened.ReadAt(1024 * 1024, readBack));
            Assert.Equal(data, readBack);
            return;
        }
        byte[] stored = disk.Device is MemoryBlockDevice memory
            ? memory.Contents.Slice(1024 * 1024, 8192).ToArray()
            : ReadImage(disk.ImagePath!, 1024 * 1024, 8192);
        Assert.Equal(data, stored);
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Long_scatter_lists_beyond_IOV_MAX_read_back_equal(DeviceKind kind)
    {
        using TestDisk disk = TestDisk.Create(kind);
        // 1536 buffers: more than the stack-held iovecs (256) and than IOV_MAX (1024) in one call.
        int[] lengths = Enumerable.Repeat(512, 1536).ToArray();
        byte[] data = Patterns.Bytes(512 * 1536, seed: 11);
        using var source = new NativeBuffers(lengths);
        source.Fill(data);
        Assert.Equal(IoStatus.Ok, disk.Device.Write(8192, source.Buffers));

        using var target = new NativeBuffers(lengths);
        Assert.Equal(IoStatus.Ok, disk.Device.Read(8192, target.Buffers));
        Assert.Equal(data, target.Concatenate());
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Misaligned_buffers_still_read_and_write(DeviceKind kind)
    {
        using TestDisk disk = TestDisk.Create(kind);
        int sector = disk.Device.Info.LogicalSectorSize;
        // Addresses 8 bytes off a page; lengths not sector multiples (but the total is).
        int[] lengths = [1000, sector * 2 - 1000, sector];
        byte[] data = Patterns.Bytes(sector * 3, seed: 3);
        long bouncedBefore = (disk.Device as RawBlockDevice)?.BouncedTransfers ?? 0;
        using var source = new NativeBuffers(lengths, misalignment: 8);
        source.Fill(data);
        Assert.Equal(IoStatus.Ok, disk.Device.Write(sector * 5, source.Buffers));

        using var target = new NativeBuffers(lengths, misalignment: 24);
        Assert.Equal(IoStatus.Ok, disk.Device.Read(sector * 5, target.Buffers));
        Assert.Equal(data, target.Concatenate());
        if (disk.Device is RawBlockDevice { UsesDirectIo: true } raw)
        {
            Assert.Equal(bouncedBefore + 2, raw.BouncedTransfers);
        }

        // Neighbouring sectors are untouched: a bounce chunk did not spill over.
        byte[] neighbours = new byte[sector];
        Assert.Equal(IoStatus.Ok, disk.Device.ReadAt(sector * 4, neighbours));
        Assert.All(neighbours, b => Assert.Equal(0, b));
        Assert.Equal(IoStatus.Ok, disk.Device.ReadAt(sector * 8, neighbours));
        Assert.All(neighbours, b => Assert.Equal(0, b));
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Ranges_outside_the_disk_are_refused_and_nothing_is_written_past_the_end(DeviceKind kind)
    {
        using TestDisk disk = TestDisk.Create(kind);
        IBlockDevice device = disk.Device;
        long size = device.Info.SizeBytes;
        int sector = device.Info.LogicalSectorSize;
        byte[] lastSector = Patterns.Bytes(sector, seed: 5);
        Assert.Equal(IoStatus.Ok, device.WriteAt(size - sector, lastSector));
        // Measured after the write: an overlay's file grows by the cluster that write allocated.
        long imageLength = disk.ImageLength;

        byte[] buffer = Patterns.Bytes(2 * sector, seed: 6);
        Assert.Equal(IoStatus.OutOfRange, device.WriteAt(size, buffer.AsSpan(0, sector)));
        Assert.Equal(IoStatus.OutOfRange, device.WriteAt(size - sector, buffer));
        Assert.Equal(IoStatus.OutOfRange, device.WriteAt(-sector, buffer.AsSpan(0, sector)));
        Assert.Equal(IoStatus.OutOfRange, device.WriteAt(long.MaxValue - sector + 1, buffer.AsSpan(0, sector)));
        Assert.Equal(IoStatus.OutOfRange, device.ReadAt(size, buffer.AsSpan(0, sector)));
        Assert.Equal(IoStatus.OutOfRange, device.ReadAt(size - sector, buffer));
        Assert.Equal(IoStatus.OutOfRange, device.ReadAt(long.MaxValue - sector + 1, buffer.AsSpan(0, sector)));
        Assert.Equal(IoStatus.OutOfRange, device.Discard(size - sector, 2 * sector, secure: false));
        Assert.Equal(IoStatus.OutOfRange, device.Discard(sector, long.MaxValue - 1, secure: false));
        // Not whole sectors.
        Assert.Equal(IoStatus.OutOfRange, device.WriteAt(100, buffer.AsSpan(0, sector)));
        Assert.Equal(IoStatus.OutOfRange, device.WriteAt(0, buffer.AsSpan(0, sector - 1)));
        // A negative buffer length.
        using (var buffers = new NativeBuffers([sector, sector]))
        {
            IoBuffer[] hostile = [buffers.Buffers[0], buffers.Buffers[1] with { Length = -sector }];
            Assert.Equal(IoStatus.OutOfRange, device.Write(0, hostile));
        }

        byte[] readBack = new byte[sector];
        Assert.Equal(IoStatus.Ok, device.ReadAt(size - sector, readBack));
        Assert.Equal(lastSector, readBack);
        Assert.Equal(imageLength, disk.ImageLength);
        if (disk.IsFile)
        {
            Assert.Equal(Enumerable.Repeat(TestDisk.SentinelByte, TestDisk.SentinelLength), disk.ReadImageTail());
        }
        if (disk.IsOverlay)
        {
            // Nothing reached the base, in range or out of it.
            Assert.Equal(new byte[TestDisk.DefaultSize], File.ReadAllBytes(disk.BasePath!));
        }
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Read_only_devices_refuse_writes_and_discards_and_keep_their_data(DeviceKind kind)
    {
        using TestDisk disk = TestDisk.Create(kind);
        byte[] data = Patterns.Bytes(4096, seed: 9);
        Assert.Equal(IoStatus.Ok, disk.Device.WriteAt(4096, data));
        Assert.Equal(IoStatus.Ok, disk.Device.Flush());

        using IBlockDevice readOnly = kind == DeviceKind.Memory ? new MemoryBlockDevice(TestDisk.DefaultSize, readOnly: true) : disk.OpenAgain(readOnly: true);
        Assert.True(readOnly.Info.ReadOnly);
        Assert.Equal(IoStatus.ReadOnly, readOnly.WriteAt(4096, new byte[4096]));
        Assert.Equal(IoStatus.ReadOnly, readOnly.Discard(0, 8192, secure: false));
        Assert.Equal(IoStatus.ReadOnly, readOnly.Discard(0, 8192, secure: true));
        Assert.Equal(IoStatus.Ok, readOnly.Flush());

        if (kind != DeviceKind.Memory)
        {
            byte[] readBack = new byte[4096];
            Assert.Equal(IoStatus.Ok, readOnly.ReadAt(4096, readBack));
            Assert.Equal(data, readBack);
        }
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Discarded_ranges_read_back_as_zeros_and_the_rest_survives(DeviceKind kind)
    {
        using TestDisk disk = TestDisk.Create(kind);
        IBlockDevice device = disk.Device;
        byte[] data = Patterns.Bytes(256 * 1024, seed: 13);
        Assert.Equal(IoStatus.Ok, device.WriteAt(0, data));
        if (kind == DeviceKind.RamfsFile)
        {
            // ramfs cannot punch holes: the device says so up front and refuses, leaving the data alone.
            Assert.False(device.Info.SupportsDiscard);
            Assert.Equal(IoStatus.NotSupported, device.Discard(64 * 1024, 128 * 1024, secure: false));
            byte[] unchanged = new byte[256 * 1024];
            Assert.Equal(IoStatus.Ok, device.ReadAt(0, unchanged));
            Assert.Equal(data, unchanged);
            return;
        }
        Assert.True(device.Info.SupportsDiscard);

        // 64 KiB-aligned, so every kind's discard granularity divides it.
        Assert.Equal(IoStatus.Ok, device.Discard(64 * 1024, 128 * 1024, secure: false));
        Assert.Equal(IoStatus.Ok, device.Discard(0, 0, secure: false));

        byte[] readBack = new byte[256 * 1024];
        Assert.Equal(IoStatus.Ok, device.ReadAt(0, readBack));
        // Files, memory and overlays promise zeros (DiscardZeroes). Block devices do not, but a loop
        // device punches holes in its backing file, so it reads zeros as well.
        Assert.Equal(!disk.IsLoop, device.Info.DiscardZeroes);
        Assert.All(readBack.AsSpan(64 * 1024, 128 * 1024).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(data.AsSpan(0, 64 * 1024).ToArray(), readBack.AsSpan(0, 64 * 1024).ToArray());
        Assert.Equal(data.AsSpan(192 * 1024).ToArray(), readBack.AsSpan(192 * 1024).ToArray());
        Assert.Equal(TestDisk.DefaultSize, device.Refresh().SizeBytes);
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Secure_discard_zeroes_memory_and_is_not_supported_by_files_and_loop_devices(DeviceKind kind)
    {
        using TestDisk disk = TestDisk.Create(kind);
        IBlockDevice device = disk.Device;
        byte[] data = Patterns.Bytes(8192, seed: 17);
        Assert.Equal(IoStatus.Ok, device.WriteAt(0, data));

        IoStatus status = device.Discard(0, 8192, secure: true);
        byte[] readBack = new byte[8192];
        Assert.Equal(IoStatus.Ok, device.ReadAt(0, readBack));
        if (kind == DeviceKind.Memory)
        {
            Assert.True(device.Info.SupportsSecureDiscard);
            Assert.Equal(IoStatus.Ok, status);
            Assert.Equal(new byte[8192], readBack);
        }
        else
        {
            // Files cannot promise the old blocks are gone (nor can an overlay, which is a file); the
            // loop driver has no secure erase.
            Assert.False(device.Info.SupportsSecureDiscard);
            Assert.Equal(IoStatus.NotSupported, status);
            Assert.Equal(data, readBack);
        }
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Flush_succeeds(DeviceKind kind)
    {
        using TestDisk disk = TestDisk.Create(kind);
        Assert.Equal(IoStatus.Ok, disk.Device.WriteAt(0, Patterns.Bytes(4096, seed: 1)));
        Assert.Equal(IoStatus.Ok, disk.Device.Flush());
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Size_and_sector_sizes_are_reported(DeviceKind kind)
    {
        using TestDisk disk = TestDisk.Create(kind);
        BlockDeviceInfo info = disk.Device.Info;
        Assert.Equal(TestDisk.DefaultSize, info.SizeBytes);
        int expectedLogical = kind == DeviceKind.LoopDevice4K ? 4096 : 512;
        Assert.Equal(expectedLogical, info.LogicalSectorSize);
        if (disk.IsLoop)
        {
            // The loop driver reports at least the logical size, and the backing device's physical size if larger.
            Assert.True(info.PhysicalSectorSize >= expectedLogical && int.IsPow2(info.PhysicalSectorSize));
        }
        else
        {
            // Files present 512/512 unless asked otherwise, whatever the host file system's block size.
            Assert.Equal(512, info.PhysicalSectorSize);
        }
        Assert.False(info.ReadOnly);
        Assert.True(info.DiscardGranularity >= info.LogicalSectorSize && int.IsPow2(info.DiscardGranularity));
        Assert.False(string.IsNullOrEmpty(info.Description));
        if (disk.DevicePath is { } path)
        {
            Assert.Contains(path, info.Description, StringComparison.Ordinal);
        }
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Refresh_reports_the_size_after_the_storage_grows(DeviceKind kind)
    {
        using TestDisk disk = TestDisk.Create(kind);
        long grown = TestDisk.DefaultSize * 2;
        disk.Grow(grown);
        if (disk.Kind == DeviceKind.BitmapOverlay)
        {
            // Its header fixes the virtual size: a grown base changes nothing the guest sees.
            Assert.Equal(TestDisk.DefaultSize, disk.Device.Refresh().SizeBytes);
            return;
        }

        BlockDeviceInfo info = disk.Device.Refresh();
        Assert.Equal(grown, info.SizeBytes);
        Assert.Same(info, disk.Device.Info);

        // The new space is usable at once.
        byte[] data = Patterns.Bytes(8192, seed: 19);
        Assert.Equal(IoStatus.Ok, disk.Device.WriteAt(grown - 8192, data));
        byte[] readBack = new byte[8192];
        Assert.Equal(IoStatus.Ok, disk.Device.ReadAt(grown - 8192, readBack));
        Assert.Equal(data, readBack);
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Concurrent_writes_to_separate_ranges_all_land(DeviceKind kind)
    {
        using TestDisk disk = TestDisk.Create(kind);
        const int Threads = 4;
        const int WritesPerThread = 16;
        const int Chunk = 8192;
        Parallel.For(0, Threads, new ParallelOptions { MaxDegreeOfParallelism = Threads }, thread =>
        {
            for (int i = 0; i < WritesPerThread; i++)
            {
                long offset = ((long)thread * WritesPerThread + i) * Chunk;
                Assert.Equal(IoStatus.Ok, disk.Device.WriteAt(offset, Patterns.Bytes(Chunk, seed: (int)offset)));
            }
        });
        byte[] readBack = new byte[Chunk];
        for (long offset = 0; offset < Threads * WritesPerThread * Chunk; offset += Chunk)
        {
            Assert.Equal(IoStatus.Ok, disk.Device.ReadAt(offset, readBack));
            Assert.Equal(Patterns.Bytes(Chunk, seed: (int)offset), readBack);
        }
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Empty_scatter_lists_succeed_without_touching_anything(DeviceKind kind)
    {
        using TestDisk disk = TestDisk.Create(kind);
        Assert.Equal(IoStatus.Ok, disk.Device.Read(0, ReadOnlySpan<IoBuffer>.Empty));
        Assert.Equal(IoStatus.Ok, disk.Device.Write(disk.Device.Info.SizeBytes, ReadOnlySpan<IoBuffer>.Empty));
    }

    [Theory]
    [MemberData(nameof(AllKinds))]
    public void Io_after_dispose_is_an_error_result_not_a_crash(DeviceKind kind)
    {
        using TestDisk disk = TestDisk.Create(kind);
        disk.Device.Dispose();
        byte[] buffer = new byte[4096];
        Assert.Equal(IoStatus.IoError, disk.Device.ReadAt(0, buffer));
        Assert.Equal(IoStatus.IoError, disk.Device.WriteAt(0, buffer));
    }

    private static byte[] ReadImage(string path, long offset, int length)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        stream.Position = offset;
        byte[] data = new byte[length];
        stream.ReadExactly(data);
        return data;
    }
}
