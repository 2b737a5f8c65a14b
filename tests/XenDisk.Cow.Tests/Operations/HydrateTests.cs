using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Operations.Support;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;
using XenDisk.Cow.Overlays;

namespace XenDisk.Cow.Tests.Operations;

/// <summary>Hydration makes an overlay standalone: same contents without its base, clean for QEMU, resumable, and safe beside guest writes.</summary>
[Trait(Needs.Key, Needs.Qemu)]
public class HydrateTests
{
    private const int DiskSize = 4 << 20;

    [Theory]
    [InlineData(65536, true)]
    [InlineData(65536, false)]
    [InlineData(4096, false)]
    [InlineData(16384, true)]
    public void Hydrated_image_reads_the_same_without_its_base_and_qemu_sees_no_backing_file(int clusterSize, bool extendedL2)
    {
        using TempDirectory directory = new();
        byte[] model = ImageFiles.BaseContents(DiskSize, clusterSize);
        File.WriteAllBytes(directory.File("base.raw"), model);
        string overlay = ImageFiles.CreateOverlay(directory, "overlay.qcow2", "base.raw", "raw", DiskSize, clusterSize, extendedL2);
        using (Qcow2Image image = ImageFiles.Open(directory, overlay))
        {
            ImageFiles.WriteRandomly(image, model, new Random(clusterSize), 40);
            Assert.Equal(IoStatus.Ok, image.Close());
        }

        List<(long Done, long Total)> progress = [];
        OverlayOperationResult result = Qcow2Operations.Hydrate(overlay, new Qcow2HydrateOptions { Progress = (done, total) => progress.Add((done, total)) }, ImageFiles.Files(directory));

        Assert.True(result.Succeeded, result.Error);
        Assert.Equal(DiskSize, result.BytesExamined);
        Assert.True(result.BytesCopied > 0);
        Assert.Equal((DiskSize, DiskSize), progress[^1]);
        Assert.True(progress.Zip(progress.Skip(1)).All(p => p.First.Done <= p.Second.Done), "progress went backwards");
        Qcow2Header header = ImageFiles.Header(overlay);
        Assert.Null(header.BackingFile);
        Assert.Null(header.BackingFormat);
        Assert.Null(ImageFiles.QemuBackingFile(overlay));
        ImageFiles.AssertQemuCheckClean(overlay);

        // The base is no longer needed: garbage in its place changes nothing, and neither does its absence.
        File.WriteAllBytes(directory.File("base.raw"), TestData.Random(DiskSize, 99));
        using (Qcow2Image image = Qcow2Disk.Open(overlay, new Qcow2OpenOptions { ReadOnly = true }))
        {
            Assert.False(image.HasBacking);
            ImageFiles.AssertContents(model, TestData.ReadAll(image));
        }
        File.Delete(directory.File("base.raw"));
        ImageFiles.AssertContents(model, ImageFiles.QemuConvert(directory, overlay));
    }

    [Fact]
    public void Zero_stretches_of_the_base_are_not_copied()
    {
        using TempDirectory directory = new();
        byte[] model = new byte[DiskSize];
        TestData.Random(65536, 7).CopyTo(model, 1 << 20);
        File.WriteAllBytes(directory.File("base.raw"), model);
        string overlay = ImageFiles.CreateOverlay(directory, "overlay.qcow2", "base.raw", "raw", DiskSize, 65536, extendedL2: false);

        OverlayOperationResult result = Qcow2Operations.Hydrate(overlay, files: ImageFiles.Files(directory));

        Assert.Equal(65536, result.BytesCopied);
        File.Delete(directory.File("base.raw"));
        using (Qcow2Image image = Qcow2Disk.Open(overlay, new Qcow2OpenOptions { ReadOnly = true }))
        {
            ImageFiles.AssertContents(model, TestData.ReadAll(image));
        }
        using XenDisk.Cow.Storage.FileImageDevice file = XenDisk.Cow.Storage.FileImageDevice.Open(overlay, readOnly: true);
        Assert.Equal(65536, Qcow2Image.Describe(file).AllocatedBytes);
    }

    [Fact]
    public void Cancelled_hydration_leaves_a_consistent_image_and_the_rerun_finishes_it()
    {
        using TempDirectory directory = new();
        byte[] model = ImageFiles.BaseContents(DiskSize, 3);
        File.WriteAllBytes(directory.File("base.raw"), model);
        string overlay = ImageFiles.CreateOverlay(directory, "overlay.qcow2", "base.raw", "raw", DiskSize, 16384, extendedL2: true);
        using (Qcow2Image image = ImageFiles.Open(directory, overlay))
        {
            ImageFiles.WriteRandomly(image, model, new Random(3), 30);
            Assert.Equal(IoStatus.Ok, image.Close());
        }

        // The same image hydrated in one go, for comparison.
        string twin = directory.File("twin.qcow2");
        File.Copy(overlay, twin);
        OverlayOperationResult whole = Qcow2Operations.Hydrate(twin, files: ImageFiles.Files(directory));
        Assert.True(whole.Succeeded, whole.Error);

        using CancellationTokenSource cancel = new();
        Qcow2HydrateOptions options = new()
        {
            CheckpointBytes = 256 * 1024,
            Progress = (done, total) =>
            {
                if (done >= total / 2)
                {
                    cancel.Cancel();
                }
            },
        };
        Assert.ThrowsAny<OperationCanceledException>(() => Qcow2Operations.Hydrate(overlay, options, ImageFiles.Files(directory), cancel.Token));

        // Interrupted: still an overlay of its base, consistent, and reading the same.
        Assert.Equal("base.raw", ImageFiles.Header(overlay).BackingFile);
        ImageFiles.AssertQemuCheckClean(overlay);
        using (Qcow2Image image = ImageFiles.Open(directory, overlay, readOnly: true))
        {
            ImageFiles.AssertContents(model, TestData.ReadAll(image));
        }

        OverlayOperationResult rest = Qcow2Operations.Hydrate(overlay, files: ImageFiles.Files(directory));

        Assert.True(rest.Succeeded, rest.Error);
        Assert.InRange(rest.BytesCopied, 1, whole.BytesCopied - 1);
        Assert.Null(ImageFiles.Header(overlay).BackingFile);
        ImageFiles.AssertQemuCheckClean(overlay);
        File.Delete(directory.File("base.raw"));
        using (Qcow2Image image = Qcow2Disk.Open(overlay, new Qcow2OpenOptions { ReadOnly = true }))
        {
            ImageFiles.AssertContents(model, TestData.ReadAll(image));
        }
        ImageFiles.AssertContents(ImageFiles.QemuConvert(directory, twin), ImageFiles.QemuConvert(directory, overlay));
    }

    [Theory]
    [InlineData(4096, false)]
    [InlineData(65536, true)]
    [InlineData(65536, false)]
    public void Online_hydration_beside_a_guest_writer_never_overwrites_a_guest_write(int clusterSize, bool extendedL2)
    {
        using TempDirectory directory = new();
        byte[] model = ImageFiles.BaseContents(DiskSize, clusterSize + 11);
        File.WriteAllBytes(directory.File("base.raw"), model);
        string overlay = ImageFiles.CreateOverlay(directory, "overlay.qcow2", "base.raw", "raw", DiskSize, clusterSize, extendedL2);
        using (Qcow2Image image = ImageFiles.Open(directory, overlay))
        {
            OverlayOperationResult? result = null;
            Exception? failure = null;
            // Throttled so that the guest writes for the whole run.
            Thread hydrator = new(() =>
            {
                try
                {
                    result = image.Hydrate(new Qcow2HydrateOptions { BytesPerSecond = 16 << 20, CheckpointBytes = 512 * 1024 });
                }
                catch (Exception e)
                {
                    failure = e;
                }
            });
            hydrator.Start();
            Random random = new(clusterSize);
            int writesDuringHydration = 0;
            while (hydrator.IsAlive && writesDuringHydration < 20_000)
            {
                ImageFiles.WriteRandomly(image, model, random, 1, maximumSectors: 24);
                writesDuringHydration++;
            }
            hydrator.Join();
            Assert.Null(failure);
            Assert.True(result!.Succeeded, result.Error);
            Assert.True(writesDuringHydration > 0);

            // Every byte is the writer's last write or the base's.
            ImageFiles.AssertContents(model, TestData.ReadAll(image));
            ImageFiles.WriteRandomly(image, model, random, 20, maximumSectors: 24);
            Assert.Equal(IoStatus.Ok, image.Close());
        }

        Assert.Null(ImageFiles.Header(overlay).BackingFile);
        ImageFiles.AssertQemuCheckClean(overlay);
        File.WriteAllBytes(directory.File("base.raw"), TestData.Random(DiskSize, 1234));
        using (Qcow2Image image = Qcow2Disk.Open(overlay, new Qcow2OpenOptions { ReadOnly = true }))
        {
            ImageFiles.AssertContents(model, TestData.ReadAll(image));
        }
        ImageFiles.AssertContents(model, ImageFiles.QemuConvert(directory, overlay));
    }

    [Fact]
    public void Hydrating_a_standalone_image_is_a_no_op_and_a_read_only_image_is_refused()
    {
        using TempDirectory directory = new();
        string plain = directory.File("plain.qcow2");
        Qcow2Disk.Create(plain, new Qcow2CreateOptions { VirtualSize = DiskSize });
        OverlayOperationResult result = Qcow2Operations.Hydrate(plain);
        Assert.True(result.Succeeded);
        Assert.Equal(0, result.BytesCopied);

        File.WriteAllBytes(directory.File("base.raw"), new byte[DiskSize]);
        string overlay = ImageFiles.CreateOverlay(directory, "overlay.qcow2", "base.raw", "raw", DiskSize, 65536, extendedL2: false);
        using Qcow2Image image = ImageFiles.Open(directory, overlay, readOnly: true);
        OverlayOperationResult refused = image.Hydrate();
        Assert.Equal(IoStatus.ReadOnly, refused.Status);
        Assert.Contains("read-only", refused.Error);
    }
}
