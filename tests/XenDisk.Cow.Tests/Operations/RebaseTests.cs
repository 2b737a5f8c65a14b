using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Operations.Support;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;
using XenDisk.Cow.Overlays;

namespace XenDisk.Cow.Tests.Operations;

/// <summary>Rebase: safe mode keeps the virtual disk identical over a different backing file; unsafe mode only rewrites the header.</summary>
[Trait(Needs.Key, Needs.Qemu)]
public class RebaseTests
{
    private const int DiskSize = 4 << 20;

    [Theory]
    [InlineData(65536, true)]
    [InlineData(65536, false)]
    [InlineData(4096, false)]
    public void Safe_rebase_onto_a_partly_different_base_keeps_the_contents(int clusterSize, bool extendedL2)
    {
        using TempDirectory directory = new();
        byte[] oldBase = ImageFiles.BaseContents(DiskSize, clusterSize);
        byte[] newBase = (byte[])oldBase.Clone();
        Random random = new(clusterSize);
        for (int i = 0; i < 10; i++)
        {
            int offset = random.Next(DiskSize / 512) * 512;
            TestData.Random(Math.Min(3000, DiskSize - offset), i).CopyTo(newBase, offset);
        }
        File.WriteAllBytes(directory.File("old.raw"), oldBase);
        File.WriteAllBytes(directory.File("new.raw"), newBase);
        byte[] model = (byte[])oldBase.Clone();
        string overlay = ImageFiles.CreateOverlay(directory, "overlay.qcow2", "old.raw", "raw", DiskSize, clusterSize, extendedL2);
        using (Qcow2Image image = ImageFiles.Open(directory, overlay))
        {
            ImageFiles.WriteRandomly(image, model, random, 20);
            Assert.Equal(IoStatus.Ok, image.Close());
        }

        OverlayOperationResult result = Qcow2Operations.Rebase(overlay, "new.raw", "raw", files: ImageFiles.Files(directory));

        Assert.True(result.Succeeded, result.Error);
        Assert.InRange(result.BytesCopied, 1, DiskSize / 4);
        Qcow2Header header = ImageFiles.Header(overlay);
        Assert.Equal("new.raw", header.BackingFile);
        Assert.Equal("raw", header.BackingFormat);
        File.WriteAllBytes(directory.File("old.raw"), TestData.Random(DiskSize, 77));
        using (Qcow2Image image = ImageFiles.Open(directory, overlay, readOnly: true))
        {
            ImageFiles.AssertContents(model, TestData.ReadAll(image));
        }
        ImageFiles.AssertQemuCheckClean(overlay);
        Assert.Equal("new.raw", ImageFiles.QemuBackingFile(overlay));
        ImageFiles.AssertContents(model, ImageFiles.QemuConvert(directory, overlay));
    }

    [Fact]
    public void Unsafe_rebase_only_rewrites_the_header()
    {
        using TempDirectory directory = new();
        byte[] oldBase = TestData.Random(DiskSize, 1);
        byte[] other = TestData.Random(DiskSize, 2);
        File.WriteAllBytes(directory.File("old.raw"), oldBase);
        File.WriteAllBytes(directory.File("other.raw"), other);
        string overlay = ImageFiles.CreateOverlay(directory, "overlay.qcow2", "old.raw", "raw", DiskSize, 65536, extendedL2: false);
        byte[] written = TestData.Random(65536, 3);
        using (Qcow2Image image = ImageFiles.Open(directory, overlay))
        {
            Assert.Equal(IoStatus.Ok, image.WriteAt(65536, written));
            Assert.Equal(IoStatus.Ok, image.Close());
        }
        byte[] before = File.ReadAllBytes(overlay);

        // Unsafe mode opens no backing file, so no policy is needed; the old base may even be gone.
        File.Delete(directory.File("old.raw"));
        OverlayOperationResult result = Qcow2Operations.Rebase(overlay, "other.raw", "raw", new Qcow2RebaseOptions { Unsafe = true });

        Assert.True(result.Succeeded, result.Error);
        Assert.Equal(0, result.BytesCopied);
        byte[] after = File.ReadAllBytes(overlay);
        Assert.Equal(before.Length, after.Length);
        Assert.True(before.AsSpan(65536).SequenceEqual(after.AsSpan(65536)), "only the header cluster may change");
        Assert.Equal("other.raw", ImageFiles.Header(overlay).BackingFile);
        ImageFiles.AssertQemuCheckClean(overlay);
        byte[] expected = (byte[])other.Clone();
        written.CopyTo(expected, 65536);
        ImageFiles.AssertContents(expected, ImageFiles.QemuConvert(directory, overlay));

        // And back to no backing file at all.
        result = Qcow2Operations.Rebase(overlay, null, null, new Qcow2RebaseOptions { Unsafe = true });
        Assert.True(result.Succeeded, result.Error);
        Assert.Null(ImageFiles.QemuBackingFile(overlay));
        ImageFiles.AssertQemuCheckClean(overlay);
    }

    [Fact]
    public void Safe_rebase_of_a_standalone_image_onto_a_base_stores_zeros_where_the_base_has_data()
    {
        using TempDirectory directory = new();
        string image = directory.File("plain.qcow2");
        Qcow2Disk.Create(image, new Qcow2CreateOptions { VirtualSize = DiskSize, ClusterSize = 65536 });
        byte[] model = new byte[DiskSize];
        using (Qcow2Image open = Qcow2Disk.Open(image))
        {
            ImageFiles.WriteRandomly(open, model, new Random(8), 10, discards: false);
            Assert.Equal(IoStatus.Ok, open.Close());
        }
        File.WriteAllBytes(directory.File("base.raw"), TestData.Random(DiskSize, 9));

        OverlayOperationResult result = Qcow2Operations.Rebase(image, "base.raw", "raw", files: ImageFiles.Files(directory));

        Assert.True(result.Succeeded, result.Error);
        ImageFiles.AssertQemuCheckClean(image);
        ImageFiles.AssertContents(model, ImageFiles.QemuConvert(directory, image));
    }

    [Theory]
    [InlineData("new.raw", "vmdk", "format")]
    [InlineData("new.raw", null, "format")]
    [InlineData("nbd:localhost:10809", "raw", "protocol")]
    [InlineData("../outside.raw", "raw", "not allowed")]
    public void Rebase_refuses_bad_targets(string name, string? format, string fragment)
    {
        using TempDirectory directory = new();
        File.WriteAllBytes(directory.File("base.raw"), new byte[DiskSize]);
        string overlay = ImageFiles.CreateOverlay(directory, "overlay.qcow2", "base.raw", "raw", DiskSize, 65536, extendedL2: false);
        byte[] before = File.ReadAllBytes(overlay);
        StorageException e = Assert.Throws<StorageException>(() => Qcow2Operations.Rebase(overlay, name, format, files: ImageFiles.Files(directory)));
        Assert.Contains(fragment, e.Message);
        Assert.Equal(before, File.ReadAllBytes(overlay));
    }

    [Fact]
    public void Headers_qemu_wrote_are_rewritten_keeping_their_other_extensions()
    {
        using TempDirectory directory = new();
        byte[] model = ImageFiles.BaseContents(DiskSize, 31);
        File.WriteAllBytes(directory.File("base.raw"), model);
        string overlay = directory.File("overlay.qcow2");
        QemuTools.RunOk(QemuTools.QemuImg, "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "-b", "base.raw", "-F", "raw", overlay);
        QemuTools.RunOk(QemuTools.QemuIo, "-f", "qcow2", "-c", "write -P 0x5c 64k 100k", overlay);
        model.AsSpan(65536, 102400).Fill(0x5c);
        Assert.NotEmpty(ImageFiles.Header(overlay).FeatureNames);

        // A long name moves the end of the used area; then back to the short one, then none.
        string longName = "./" + string.Concat(Enumerable.Repeat("sub/../", 60)) + "base.raw";
        Assert.True(Qcow2Operations.Rebase(overlay, longName, "raw", new Qcow2RebaseOptions { Unsafe = true }).Succeeded);
        Assert.Equal(longName, ImageFiles.Header(overlay).BackingFile);
        Directory.CreateDirectory(directory.File("sub"));
        ImageFiles.AssertQemuCheckClean(overlay);
        ImageFiles.AssertContents(model, ImageFiles.QemuConvert(directory, overlay));

        Assert.True(Qcow2Operations.Rebase(overlay, "base.raw", "raw", new Qcow2RebaseOptions { Unsafe = true }).Succeeded);
        Assert.Equal("base.raw", ImageFiles.QemuBackingFile(overlay));
        Assert.True(Qcow2Operations.Hydrate(overlay, files: ImageFiles.Files(directory)).Succeeded);

        Qcow2Header header = ImageFiles.Header(overlay);
        Assert.Null(header.BackingFile);
        Assert.NotEmpty(header.FeatureNames);
        Assert.Null(ImageFiles.QemuBackingFile(overlay));
        ImageFiles.AssertQemuCheckClean(overlay);
        File.Delete(directory.File("base.raw"));
        ImageFiles.AssertContents(model, ImageFiles.QemuConvert(directory, overlay));
    }
}
