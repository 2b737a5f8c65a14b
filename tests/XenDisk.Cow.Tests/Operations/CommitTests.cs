using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Operations.Support;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;
using XenDisk.Cow.Overlays;

namespace XenDisk.Cow.Tests.Operations;

/// <summary>Commit writes the virtual disk into the backing image; emptying then makes the overlay read through again.</summary>
[Trait(Needs.Key, Needs.Qemu)]
public class CommitTests
{
    private const int DiskSize = 4 << 20;

    [Theory]
    [InlineData(65536, true, false)]
    [InlineData(65536, false, true)]
    [InlineData(16384, true, true)]
    [InlineData(4096, false, false)]
    public void Commit_makes_a_raw_base_equal_to_the_virtual_disk(int clusterSize, bool extendedL2, bool emptyOverlay)
    {
        using TempDirectory directory = new();
        byte[] model = ImageFiles.BaseContents(DiskSize, clusterSize);
        File.WriteAllBytes(directory.File("base.raw"), model);
        string overlay = ImageFiles.CreateOverlay(directory, "overlay.qcow2", "base.raw", "raw", DiskSize, clusterSize, extendedL2);
        using (Qcow2Image image = ImageFiles.Open(directory, overlay))
        {
            ImageFiles.WriteRandomly(image, model, new Random(clusterSize), 50);
            Assert.Equal(IoStatus.Ok, image.Close());
        }

        OverlayOperationResult result = Qcow2Operations.Commit(overlay, new Qcow2CommitOptions { EmptyOverlay = emptyOverlay }, ImageFiles.Files(directory));

        Assert.True(result.Succeeded, result.Error);
        Assert.True(result.BytesCopied > 0);
        ImageFiles.AssertContents(model, File.ReadAllBytes(directory.File("base.raw")));
        ImageFiles.AssertQemuCheckClean(overlay);
        using Qcow2Image after = ImageFiles.Open(directory, overlay, readOnly: true);
        ImageFiles.AssertContents(model, TestData.ReadAll(after));
        IReadOnlyList<Qcow2Extent> map = after.Map();
        if (emptyOverlay)
        {
            Assert.All(map, extent => Assert.Equal(Qcow2ExtentKind.Backing, extent.Kind));
        }
        else
        {
            Assert.Contains(map, extent => extent.Kind == Qcow2ExtentKind.Data);
        }
    }

    [Fact]
    public void Commit_into_a_qcow2_base_and_empty_the_overlay()
    {
        using TempDirectory directory = new();
        byte[] model = ImageFiles.BaseContents(DiskSize, 5);
        string basePath = directory.File("base.qcow2");
        Qcow2Disk.Create(basePath, new Qcow2CreateOptions { VirtualSize = DiskSize });
        using (Qcow2Image baseImage = Qcow2Disk.Open(basePath))
        {
            Assert.Equal(IoStatus.Ok, baseImage.WriteAt(0, model));
            Assert.Equal(IoStatus.Ok, baseImage.Close());
        }
        string overlay = ImageFiles.CreateOverlay(directory, "overlay.qcow2", "base.qcow2", "qcow2", DiskSize, 65536, extendedL2: true);
        using (Qcow2Image image = ImageFiles.Open(directory, overlay))
        {
            ImageFiles.WriteRandomly(image, model, new Random(5), 50);
            Assert.Equal(IoStatus.Ok, image.Close());
        }

        OverlayOperationResult result = Qcow2Operations.Commit(overlay, new Qcow2CommitOptions { EmptyOverlay = true }, ImageFiles.Files(directory));

        Assert.True(result.Succeeded, result.Error);
        ImageFiles.AssertQemuCheckClean(basePath);
        ImageFiles.AssertQemuCheckClean(overlay);
        ImageFiles.AssertContents(model, ImageFiles.QemuConvert(directory, basePath));
        ImageFiles.AssertContents(model, ImageFiles.QemuConvert(directory, overlay));
    }

    [Fact]
    public void Commit_refuses_a_read_only_backing_device_and_an_image_without_backing()
    {
        byte[] contents = TestData.Random(1 << 20, 1);
        using MemoryBlockDevice backing = TestData.Base(contents);
        using GrowableMemoryDevice overlayDevice = TestData.NewOverlay(1 << 20, 65536, extendedL2: false, withBacking: true);
        using (Qcow2Image image = TestData.Open(overlayDevice, new ReadOnlyDevice(backing)))
        {
            InvalidOperationException e = Assert.Throws<InvalidOperationException>(() => image.Commit());
            Assert.Contains("writable", e.Message);
        }

        using TempDirectory directory = new();
        string plain = directory.File("plain.qcow2");
        Qcow2Disk.Create(plain, new Qcow2CreateOptions { VirtualSize = 1 << 20 });
        StorageException refused = Assert.Throws<StorageException>(() => Qcow2Operations.Commit(plain));
        Assert.Contains("no backing file", refused.Message);
    }

    /// <summary>A view of a device that reports itself read-only.</summary>
    private sealed class ReadOnlyDevice(IBlockDevice inner) : IBlockDevice
    {
        public BlockDeviceInfo Info => inner.Info with { ReadOnly = true };
        public bool CompletesInline => inner.CompletesInline;
        public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers) => inner.Read(offset, buffers);
        public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers) => IoStatus.ReadOnly;
        public IoStatus Flush() => IoStatus.Ok;
        public IoStatus Discard(long offset, long length, bool secure) => IoStatus.ReadOnly;
        public BlockDeviceInfo Refresh() => Info;
        public void Dispose()
        {
        }
    }
}
