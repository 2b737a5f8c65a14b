using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Operations.Support;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Operations;

/// <summary>External snapshots: each freezes the current top and stacks an empty overlay on it.</summary>
[Trait(Needs.Key, Needs.Qemu)]
public class SnapshotTests
{
    private const int DiskSize = 4 << 20;

    [Fact]
    public void A_chain_of_three_reads_like_the_model_in_XenDisk_and_qemu()
    {
        using TempDirectory directory = new();
        byte[] model = ImageFiles.BaseContents(DiskSize, 21);
        File.WriteAllBytes(directory.File("base.raw"), model);
        string first = ImageFiles.CreateOverlay(directory, "layer1.qcow2", "base.raw", "raw", DiskSize, 65536, extendedL2: true);
        Random random = new(21);
        List<(string Path, byte[] Frozen)> frozen = [];
        string top = first;
        for (int layer = 1; layer <= 3; layer++)
        {
            using (Qcow2Image image = ImageFiles.Open(directory, top))
            {
                ImageFiles.AssertContents(model, TestData.ReadAll(image));
                ImageFiles.WriteRandomly(image, model, random, 25);
                Assert.Equal(IoStatus.Ok, image.Close());
            }
            if (layer < 3)
            {
                frozen.Add((top, (byte[])model.Clone()));
                string next = directory.File($"layer{layer + 1}.qcow2");
                Qcow2Operations.Snapshot(top, next, new Qcow2SnapshotOptions { ClusterSize = layer == 1 ? 16384 : 0 });
                Assert.Equal(Path.GetFileName(top), ImageFiles.Header(next).BackingFile);
                Assert.Equal("qcow2", ImageFiles.Header(next).BackingFormat);
                top = next;
            }
        }

        using (Qcow2Image image = ImageFiles.Open(directory, top, readOnly: true))
        {
            ImageFiles.AssertContents(model, TestData.ReadAll(image));
        }
        ImageFiles.AssertQemuCheckClean(top);
        ImageFiles.AssertContents(model, ImageFiles.QemuConvert(directory, top));
        // The frozen layers still read as they did when they were frozen.
        foreach ((string path, byte[] contents) in frozen)
        {
            ImageFiles.AssertQemuCheckClean(path);
            ImageFiles.AssertContents(contents, ImageFiles.QemuConvert(directory, path));
        }
    }

    [Fact]
    public void Snapshot_refuses_an_existing_file_and_an_image_open_for_lazy_writing()
    {
        using TempDirectory directory = new();
        string image = directory.File("disk.qcow2");
        Qcow2Disk.Create(image, new Qcow2CreateOptions { VirtualSize = DiskSize });
        File.WriteAllBytes(directory.File("taken.qcow2"), [1, 2, 3]);
        Assert.Throws<StorageException>(() => Qcow2Operations.Snapshot(image, directory.File("taken.qcow2")));
        Assert.Equal([1, 2, 3], File.ReadAllBytes(directory.File("taken.qcow2")));

        using (Qcow2Image open = Qcow2Disk.Open(image, new Qcow2OpenOptions { Policy = XenDisk.Cow.Policies.MetadataPolicy.Lazy }))
        {
            // Refused by the image lock the open image holds (as QEMU refuses it), before the dirty bit is even read.
            StorageException e = Assert.Throws<StorageException>(() => Qcow2Operations.Snapshot(image, directory.File("top.qcow2")));
            Assert.Contains("Failed to get shared \"write\" lock", e.Message);
            Assert.Contains("this process", e.Message);
        }
        Assert.False(File.Exists(directory.File("top.qcow2")));
    }
}
