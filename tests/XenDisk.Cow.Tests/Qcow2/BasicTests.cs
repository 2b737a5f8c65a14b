using XenDisk.Cow.Policies;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2;

public class BasicTests
{
    [Fact]
    public void Empty_image_without_backing_reads_zeros()
    {
        GrowableMemoryDevice overlay = TestData.NewOverlay(1 << 20, 65536, null, withBacking: false);
        using Qcow2Image image = TestData.Open(overlay, null);
        Assert.Equal(1 << 20, image.Info.SizeBytes);
        Assert.All(TestData.ReadAll(image), b => Assert.Equal(0, b));
    }

    [Fact]
    public void Fresh_overlay_reads_the_base()
    {
        byte[] baseData = TestData.Random(1 << 20, 1);
        using MemoryBlockDevice backing = TestData.Base(baseData);
        GrowableMemoryDevice overlay = TestData.NewOverlay(1 << 20, 65536, null, withBacking: true);
        using Qcow2Image image = TestData.Open(overlay, backing);
        Assert.True(image.ExtendedL2);
        Assert.Equal(2048, image.AllocationUnit);
        Assert.Equal(baseData, TestData.ReadAll(image));
    }

    [Fact]
    public void Small_first_write_copies_at_most_one_subcluster_from_the_base()
    {
        byte[] baseData = TestData.Random(1 << 20, 2);
        using MemoryBlockDevice backing = TestData.Base(baseData);
        GrowableMemoryDevice overlay = TestData.NewOverlay(1 << 20, 65536, null, withBacking: true);
        using (Qcow2Image image = TestData.Open(overlay, backing))
        {
            byte[] data = TestData.Random(4096, 3);
            long before = overlay.WrittenBytes;
            // 4 KiB at offset 65536 + 1024: touches subclusters 0..2 partly (1 KiB head fill, 1 KiB tail fill).
            Assert.Equal(IoStatus.Ok, image.WriteAt(65536 + 1024, data));
            Assert.Equal(2048, image.Statistics.CopiedBytes); // the two partial-subcluster fills
            // Besides the write and its fills, only metadata went to the file before the answer: the
            // header sector (dirty bit), the new L2 table and the L1 sector.
            long metadataBytes = 512 + 65536 + 512;
            Assert.Equal(4096 + 2048 + metadataBytes, overlay.WrittenBytes - before);
            data.CopyTo(baseData, 65536 + 1024);
            Assert.Equal(baseData, TestData.ReadAll(image));
        }
        using Qcow2Image reopened = TestData.Open(overlay, backing);
        Assert.Equal(baseData, TestData.ReadAll(reopened));
        Assert.True(Qcow2Checker.Check(overlay).IsClean);
    }

    [Fact]
    public void Discard_reads_zeros_not_the_base()
    {
        byte[] baseData = TestData.Random(1 << 20, 4);
        using MemoryBlockDevice backing = TestData.Base(baseData);
        GrowableMemoryDevice overlay = TestData.NewOverlay(1 << 20, 65536, null, withBacking: true);
        using (Qcow2Image image = TestData.Open(overlay, backing))
        {
            Assert.Equal(IoStatus.Ok, image.WriteAt(0, TestData.Random(200_192, 5)));
            Assert.Equal(IoStatus.Ok, image.Discard(512, 300_032, secure: false));
            Assert.Equal(IoStatus.NotSupported, image.Discard(0, 512, secure: true));
        }
        using Qcow2Image reopened = TestData.Open(overlay, backing);
        byte[] all = TestData.ReadAll(reopened);
        Assert.All(all.AsSpan(512, 300_032).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(baseData.AsSpan(300_544).ToArray(), all.AsSpan(300_544).ToArray());
        Qcow2CheckReport report = Qcow2Checker.Check(overlay);
        Assert.True(report.IsClean, string.Join("\n", report.Messages));
    }

    [Fact]
    public void Metadata_memory_is_reported_per_GiB()
    {
        GrowableMemoryDevice overlay = TestData.NewOverlay(4L << 30, 65536, null, withBacking: false);
        using Qcow2Image image = TestData.Open(overlay, null);
        Assert.Equal(IoStatus.Ok, image.WriteAt(3L << 30, new byte[4096]));
        Assert.True(image.MetadataMemoryBytes > 0);
        Assert.InRange(image.MetadataBytesPerGiB, 1, 1 << 20);
        // Sized from the disk: 4 GiB with 64 KiB clusters (8192 entries, 512 MiB per table) needs 8 L2 tables.
        Assert.Equal(8, image.L2CacheCapacity);
    }

    [Fact]
    public void Resize_grows_the_L1_table_and_keeps_data()
    {
        GrowableMemoryDevice overlay = TestData.NewOverlay(1 << 20, 4096, null, withBacking: false);
        byte[] data = TestData.Random(8192, 6);
        using (Qcow2Image image = TestData.Open(overlay, null))
        {
            Assert.Equal(IoStatus.Ok, image.WriteAt(4096, data));
            Assert.Equal(IoStatus.Ok, image.Resize(64L << 20));
            Assert.Equal(64L << 20, image.Info.SizeBytes);
            Assert.Equal(IoStatus.Ok, image.WriteAt((64L << 20) - 8192, data));
        }
        using Qcow2Image reopened = TestData.Open(overlay, null);
        Assert.Equal(64L << 20, reopened.Info.SizeBytes);
        byte[] back = new byte[8192];
        Assert.Equal(IoStatus.Ok, reopened.ReadAt(4096, back));
        Assert.Equal(data, back);
        Assert.Equal(IoStatus.Ok, reopened.ReadAt((64L << 20) - 8192, back));
        Assert.Equal(data, back);
        Qcow2CheckReport report = Qcow2Checker.Check(overlay);
        Assert.True(report.IsClean, string.Join("\n", report.Messages));
    }

    [Fact]
    public void Refcount_table_grows_when_the_image_outgrows_it()
    {
        // 512-byte clusters with 16-bit refcounts: one refcount block covers 256 clusters and the
        // first table (one cluster, 64 entries) covers 16384 clusters = 8 MiB; 12 MiB of data forces growth.
        GrowableMemoryDevice overlay = TestData.NewOverlay(16 << 20, 512, null, withBacking: false);
        byte[] data = TestData.Random(12 << 20, 7);
        using (Qcow2Image image = TestData.Open(overlay, null))
        {
            Assert.Equal(IoStatus.Ok, image.WriteAt(0, data));
            Assert.Equal(IoStatus.Ok, image.Flush());
        }
        Qcow2Header header = Qcow2Disk.ReadHeader(overlay);
        Assert.True(header.RefcountTableClusters > 1);
        using Qcow2Image reopened = TestData.Open(overlay, null);
        Assert.Equal(data, TestData.ReadAll(reopened).AsSpan(0, data.Length).ToArray());
        Qcow2CheckReport report = Qcow2Checker.Check(overlay);
        Assert.True(report.IsClean, string.Join("\n", report.Messages));
    }
}
