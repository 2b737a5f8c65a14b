using XenDisk.Storage.Tests.Support;

namespace XenDisk.Storage.Tests;

/// <summary>
/// Growing a regular file through <see cref="RawBlockDevice.EnsureSize"/>: blocks are allocated (not
/// a hole), preallocation runs a step ahead, and on dispose the file is cut back to the largest size
/// asked for, never below what anyone relied on.
/// </summary>
public sealed class RawFileGrowthTests : IDisposable
{
    private const int Step = 1 << 20;
    private readonly TempDirectory _directory = new("xendisk-growth-");

    public void Dispose() => _directory.Dispose();

    private string EmptyFile(long length = 0)
    {
        string path = _directory.File($"image-{Guid.NewGuid():N}");
        using var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite);
        RandomAccess.SetLength(handle, length);
        return path;
    }

    /// <summary>Bytes the file system has allocated to the file (st_blocks x 512).</summary>
    private static long AllocatedBytes(string path) => long.Parse(ProcessRunner.Output("stat", "-c", "%b", path).Trim()) * 512;

    [Fact]
    public void Growing_without_a_step_allocates_exactly_what_is_asked()
    {
        string path = EmptyFile();
        using (var file = RawBlockDevice.Open(path, readOnly: false))
        {
            Assert.Equal(IoStatus.Ok, file.EnsureSize(Step));
            Assert.Equal(Step, file.Info.SizeBytes);
        }
        Assert.Equal(Step, new FileInfo(path).Length);
        Assert.True(AllocatedBytes(path) >= Step, "the new range is allocated, not a hole");
    }

    [Fact]
    public void Growth_preallocates_a_step_ahead_and_gives_it_back_on_dispose()
    {
        string path = EmptyFile();
        byte[] data = Patterns.Bytes(128 * 1024, seed: 7);
        using (var file = RawBlockDevice.Open(path, readOnly: false, new RawDeviceOptions { PreallocationStep = Step }))
        {
            Assert.Equal(IoStatus.Ok, file.EnsureSize(64 * 1024));
            Assert.Equal(64 * 1024 + Step, file.Info.SizeBytes);
            Assert.True(AllocatedBytes(path) >= 64 * 1024 + Step);

            // Within the preallocation the file does not grow, but the sizes asked for still count.
            Assert.Equal(IoStatus.Ok, file.EnsureSize(128 * 1024));
            Assert.Equal(64 * 1024 + Step, file.Info.SizeBytes);
            Assert.Equal(IoStatus.Ok, file.WriteAt(0, data));
        }
        Assert.Equal(128 * 1024, new FileInfo(path).Length);
        using var reopened = RawBlockDevice.Open(path, readOnly: true);
        byte[] back = new byte[data.Length];
        Assert.Equal(IoStatus.Ok, reopened.ReadAt(0, back));
        Assert.Equal(data, back);
    }

    [Fact]
    public void A_file_is_never_cut_below_the_size_it_was_opened_with()
    {
        string path = EmptyFile(4 * Step);
        using (var file = RawBlockDevice.Open(path, readOnly: false, new RawDeviceOptions { PreallocationStep = Step }))
        {
            Assert.Equal(IoStatus.Ok, file.EnsureSize(Step));
            Assert.Equal(4 * Step, file.Info.SizeBytes);
            Assert.Equal(IoStatus.Ok, file.EnsureSize(4 * Step + 4096));
            Assert.Equal(5 * Step + 4096, file.Info.SizeBytes);
        }
        Assert.Equal(4 * Step + 4096, new FileInfo(path).Length);
    }

    [Fact]
    public void A_read_only_file_does_not_grow()
    {
        string path = EmptyFile(Step);
        using var file = RawBlockDevice.Open(path, readOnly: true);
        Assert.Equal(IoStatus.ReadOnly, file.EnsureSize(2 * Step));
        Assert.Equal(Step, new FileInfo(path).Length);
    }

    [Trait(Needs.Key, Needs.Root)]
    [Trait(Needs.Key, Needs.Loop)]
    [Fact]
    public void A_block_device_cannot_grow_but_answers_within_its_size()
    {
        using TestDisk disk = TestDisk.Create(DeviceKind.LoopDevice);
        var device = Assert.IsType<RawBlockDevice>(disk.Device);
        long size = device.Info.SizeBytes;
        Assert.Equal(IoStatus.Ok, device.EnsureSize(size));
        Assert.Equal(IoStatus.NoSpace, device.EnsureSize(size + 4096));
        Assert.Equal(size, device.Info.SizeBytes);
    }
}
