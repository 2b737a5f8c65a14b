using XenDisk.Storage.Tests.Support;

namespace XenDisk.Storage.Tests;

public class RawDiskProviderTests
{
    [Fact]
    public void A_missing_path_is_refused_naming_the_path()
    {
        var provider = new RawDiskProvider();
        string path = "/var/tmp/xendisk-no-such-disk-" + Guid.NewGuid().ToString("N") + ".img";
        var error = Assert.Throws<StorageException>(() => provider.Open(new DiskSpecification(path, ReadOnly: false)));
        Assert.Contains(path, error.Message, StringComparison.Ordinal);
        Assert.Contains("does not exist", error.Message, StringComparison.Ordinal);
        Assert.Contains("errno 2", error.Message, StringComparison.Ordinal);
        Assert.Equal(2, error.Errno);
    }

    [Fact]
    public void A_directory_is_refused()
    {
        var error = Assert.Throws<StorageException>(() => new RawDiskProvider().Open(new DiskSpecification("/var/tmp", ReadOnly: true)));
        Assert.Contains("/var/tmp is a directory", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_character_device_is_refused()
    {
        var error = Assert.Throws<StorageException>(() => new RawDiskProvider().Open(new DiskSpecification("/dev/null", ReadOnly: false)));
        Assert.Contains("/dev/null is a character device", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("")]
    [InlineData("   ")]
    public void An_empty_path_is_refused(string target)
    {
        var error = Assert.Throws<StorageException>(() => new RawDiskProvider().Open(new DiskSpecification(target, ReadOnly: false)));
        Assert.Contains("No disk path", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_path_with_a_NUL_is_refused()
    {
        var error = Assert.Throws<StorageException>(() => new RawDiskProvider().Open(new DiskSpecification("/var/tmp/a\0b", ReadOnly: false)));
        Assert.Contains("NUL", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_relative_path_is_refused_unless_allowed()
    {
        using TestDisk disk = TestDisk.Create(DeviceKind.DiskFile);
        string relative = Path.GetRelativePath(Environment.CurrentDirectory, disk.ImagePath!);
        Assert.False(Path.IsPathRooted(relative));

        var error = Assert.Throws<StorageException>(() => new RawDiskProvider().Open(new DiskSpecification(relative, ReadOnly: true)));
        Assert.Contains("relative", error.Message, StringComparison.Ordinal);

        using IBlockDevice device = new RawDiskProvider(new RawDiskProviderOptions { AllowRelativePaths = true })
            .Open(new DiskSpecification(relative, ReadOnly: true));
        Assert.Equal(TestDisk.DefaultSize, device.Info.SizeBytes);
    }

    [Trait(Needs.Key, Needs.Root)]
    [Trait(Needs.Key, Needs.Loop)]
    [Theory]
    [InlineData(DeviceKind.DiskFile, true)]
    [InlineData(DeviceKind.DiskFile, false)]
    [InlineData(DeviceKind.LoopDevice, true)]
    [InlineData(DeviceKind.LoopDevice, false)]
    public void Files_and_block_devices_open_in_the_requested_mode(DeviceKind kind, bool readOnly)
    {
        using TestDisk disk = TestDisk.Create(kind);
        using IBlockDevice device = new RawDiskProvider().Open(new DiskSpecification(disk.DevicePath!, readOnly, kind == DeviceKind.LoopDevice ? "phy" : "file"));
        Assert.Equal(readOnly, device.Info.ReadOnly);
        Assert.Equal(readOnly ? IoStatus.ReadOnly : IoStatus.Ok, device.WriteAt(0, new byte[512]));
    }
}
