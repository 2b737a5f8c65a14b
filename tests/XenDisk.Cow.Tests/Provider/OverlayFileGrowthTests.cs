using XenDisk.Cow.Provider;
using XenDisk.Cow.Storage;
using XenDisk.Cow.Tests.Operations.Support;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Provider;

/// <summary>
/// Overlay files as the provider opens them: qcow2 files grow with blocks preallocated a step ahead
/// (and cut back on close), bitmap files are allocated when created. Whatever the preallocation
/// does, every acknowledged write survives a close and reopen and QEMU finds the image clean.
/// </summary>
[Trait(Needs.Key, Needs.Qemu)]
public sealed class OverlayFileGrowthTests : IDisposable
{
    private const int ClusterSize = 64 * 1024;

    private readonly TempDirectory _directory = new();
    private readonly string _basePath;
    private readonly CowDiskProvider _provider;

    public OverlayFileGrowthTests()
    {
        _basePath = _directory.File("base.raw");
        _provider = new CowDiskProvider(new CowProviderOptions { AllowedBaseDirectories = [_directory.Path] });
    }

    public void Dispose() => _directory.Dispose();

    [Fact]
    public void A_qcow2_overlay_that_grows_across_several_preallocation_steps_keeps_every_write_and_is_cut_back_on_close()
    {
        // Enough clusters that the file outgrows more than two preallocation steps.
        int clusters = (int)(OverlayFiles.QcowPreallocationStep * 5 / 2 / ClusterSize);
        long size = (long)clusters * ClusterSize;
        byte[] baseContents = TestData.Random((int)size, 3);
        File.WriteAllBytes(_basePath, baseContents);
        string overlayPath = _directory.File("guest.qcow2");
        string target = $"cow:{_basePath},{overlayPath},format=qcow2";
        byte[] expected = (byte[])baseContents.Clone();

        using (IBlockDevice disk = _provider.Open(new DiskSpecification(target, ReadOnly: false)))
        {
            // A 4 KiB first write into every cluster, in an order that is not the allocation order.
            for (int i = 0; i < clusters; i++)
            {
                int cluster = (int)((i * 7919L) % clusters);
                byte[] data = TestData.Random(4096, cluster);
                long offset = (long)cluster * ClusterSize + 8192;
                Assert.Equal(IoStatus.Ok, disk.WriteAt(offset, data));
                data.CopyTo(expected, offset);
            }
            Assert.Equal(IoStatus.Ok, disk.Flush());
            long fileWhileOpen = new FileInfo(overlayPath).Length;
            Assert.True(fileWhileOpen > (long)clusters * ClusterSize, "the open file holds every cluster it allocated");
        }
        long fileAfterClose = new FileInfo(overlayPath).Length;
        ImageFiles.AssertQemuCheckClean(overlayPath);

        using (IBlockDevice disk = _provider.Open(new DiskSpecification(target, ReadOnly: true)))
        {
            ImageFiles.AssertContents(expected, TestData.ReadAll(disk));
        }
        // Closing gave the preallocation back: the file ends within a step of its last cluster.
        Assert.True(fileAfterClose < (long)clusters * ClusterSize + OverlayFiles.QcowPreallocationStep,
            $"file of {fileAfterClose} bytes for {clusters} clusters still holds its preallocation");
        Assert.Equal(expected, ImageFiles.QemuConvert(_directory, overlayPath));
    }

    [Fact]
    public void A_bitmap_overlay_file_is_allocated_when_the_provider_creates_it()
    {
        File.WriteAllBytes(_basePath, TestData.Random(4 << 20, 4));
        string overlayPath = _directory.File("guest.bitmap");
        using (IBlockDevice disk = _provider.Open(new DiskSpecification($"cow:{_basePath},{overlayPath},format=bitmap", ReadOnly: false)))
        {
            Assert.Equal(IoStatus.Ok, disk.WriteAt(0, TestData.Random(4096, 5)));
        }
        long length = new FileInfo(overlayPath).Length;
        long allocated = long.Parse(QemuTools.RunOk("stat", "-c", "%b", overlayPath).Trim()) * 512;
        Assert.True(allocated >= length, $"{allocated} of {length} bytes allocated");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void An_overlay_made_by_qemu_img_whose_file_ends_mid_sector_is_served(bool readOnly)
    {
        byte[] baseContents = TestData.Random(1 << 20, 6);
        File.WriteAllBytes(_basePath, baseContents);
        string overlayPath = _directory.File("made-by-qemu.qcow2");
        QemuTools.RunOk(QemuTools.QemuImg, "create", "-q", "-f", "qcow2", "-b", _basePath, "-F", "raw", overlayPath);
        Assert.NotEqual(0, new FileInfo(overlayPath).Length % 512);

        foreach (string target in new[] { $"cow:{_basePath},{overlayPath},format=qcow2", $"qcow2:{overlayPath}" })
        {
            using IBlockDevice disk = _provider.Open(new DiskSpecification(target, readOnly));
            ImageFiles.AssertContents(baseContents, TestData.ReadAll(disk));
            if (!readOnly)
            {
                byte[] data = TestData.Random(4096, 7);
                Assert.Equal(IoStatus.Ok, disk.WriteAt(8192, data));
                data.CopyTo(baseContents, 8192);
                ImageFiles.AssertContents(baseContents, TestData.ReadAll(disk));
            }
        }
        ImageFiles.AssertQemuCheckClean(overlayPath);
        Assert.Equal(baseContents, ImageFiles.QemuConvert(_directory, overlayPath));
    }
}
