using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Bitmap.Support;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;
using XenDisk.Cow.Overlays;

namespace XenDisk.Cow.Tests.Statistics;

/// <summary>The engines' counters count what the engines did: copy-ups, copied bytes, metadata writes and flushes, hydration.</summary>
public sealed class OverlayStatisticsTests
{
    private const int DiskSize = 1 << 20;
    private const int BitmapGrain = 16384;
    private static readonly BitmapOverlayOptions NotOwning = new() { OwnsDevices = false };

    [Theory]
    // 8 KiB subclusters: a 4 KiB write 2 KiB into one is completed on both sides, one subcluster copied up.
    [InlineData(262144, true, 2048, 1, 4096)]
    // 2 KiB subclusters: a 4 KiB write 1 KiB into subcluster 0 ends 1 KiB into subcluster 2; two are copied up.
    [InlineData(65536, true, 1024, 2, 2048)]
    // No subclusters: the rest of the 64 KiB cluster comes from the base.
    [InlineData(65536, false, 0, 1, 65536 - 4096)]
    public void Qcow2FirstWriteOverTheBaseCountsItsCopyUpsAndCopiedBytes(int clusterSize, bool extendedL2, int offsetInCluster, int copyUps, int copiedBytes)
    {
        byte[] model = TestData.Random(DiskSize, 1);
        using MemoryBlockDevice backing = TestData.Base(model);
        GrowableMemoryDevice file = TestData.NewOverlay(DiskSize, clusterSize, extendedL2, withBacking: true);
        using Qcow2Image image = TestData.Open(file, backing);
        Assert.Equal(extendedL2, image.ExtendedL2);

        byte[] data = TestData.Random(4096, 2);
        long offset = clusterSize + offsetInCluster;
        Assert.Equal(IoStatus.Ok, image.WriteAt(offset, data));

        Assert.Equal(copyUps, image.Statistics.CopyUps);
        Assert.Equal(copiedBytes, image.Statistics.CopiedBytes);
        data.CopyTo(model, offset);
        Assert.Equal(model, TestData.ReadAll(image));
    }

    [Fact]
    public void Bitmap_first_write_over_the_base_copies_up_the_rest_of_its_grain_once()
    {
        using BitmapDisks disks = BitmapDisks.Create(BitmapDeviceKind.Memory, DiskSize, BitmapOverlay.RequiredCowSize(DiskSize, BitmapGrain), seed: 3);
        using BitmapOverlay overlay = BitmapOverlay.Create(disks.Cow, disks.Base, new BitmapCreateOptions { GrainSize = BitmapGrain }, NotOwning);
        byte[] model = (byte[])disks.BaseContents.Clone();

        // 4 KiB, 4 KiB into the second grain: 4 KiB before it and 8 KiB after it come from the base.
        byte[] data = TestData.Random(4096, 4);
        Assert.Equal(IoStatus.Ok, overlay.WriteAt(BitmapGrain + 4096, data));
        data.CopyTo(model, BitmapGrain + 4096);
        Assert.Equal(1, overlay.Statistics.CopyUps);
        Assert.Equal(BitmapGrain - 4096, overlay.Statistics.CopiedBytes);
        Assert.Equal(BitmapGrain, overlay.Statistics.OverlayAllocatedBytes);

        // A partial write into a discarded grain is completed with zeros: nothing comes from the base.
        Assert.Equal(IoStatus.Ok, overlay.Discard(4 * BitmapGrain, BitmapGrain, secure: false));
        Assert.Equal(IoStatus.Ok, overlay.WriteAt(4 * BitmapGrain, data));
        Array.Clear(model, 4 * BitmapGrain, BitmapGrain);
        data.CopyTo(model, 4 * BitmapGrain);
        Assert.Equal(1, overlay.Statistics.CopyUps);
        Assert.Equal(BitmapGrain - 4096, overlay.Statistics.CopiedBytes);
        Assert.Equal(2 * BitmapGrain, overlay.Statistics.OverlayAllocatedBytes);
        Assert.Equal(model, TestData.ReadAll(overlay));
    }

    [Fact]
    public void Qcow2_rewrite_of_allocated_data_adds_no_copy_up()
    {
        byte[] model = TestData.Random(DiskSize, 5);
        using MemoryBlockDevice backing = TestData.Base(model);
        GrowableMemoryDevice file = TestData.NewOverlay(DiskSize, 65536, extendedL2: true, withBacking: true);
        using Qcow2Image image = TestData.Open(file, backing);
        Assert.Equal(IoStatus.Ok, image.WriteAt(1024, TestData.Random(4096, 6)));
        long copyUps = image.Statistics.CopyUps;
        long copied = image.Statistics.CopiedBytes;
        Assert.True(copyUps > 0);

        byte[] again = TestData.Random(4096, 7);
        Assert.Equal(IoStatus.Ok, image.WriteAt(1024, again));
        again.CopyTo(model, 1024);

        Assert.Equal(copyUps, image.Statistics.CopyUps);
        Assert.Equal(copied, image.Statistics.CopiedBytes);
        Assert.Equal(model, TestData.ReadAll(image));
        Assert.True(image.Statistics.CacheHits > 0, "the second write found its L2 table in the cache");
    }

    [Fact]
    public void Bitmap_rewrite_of_allocated_data_adds_no_copy_up()
    {
        using BitmapDisks disks = BitmapDisks.Create(BitmapDeviceKind.Memory, DiskSize, BitmapOverlay.RequiredCowSize(DiskSize, BitmapGrain), seed: 8);
        using BitmapOverlay overlay = BitmapOverlay.Create(disks.Cow, disks.Base, new BitmapCreateOptions { GrainSize = BitmapGrain }, NotOwning);
        byte[] model = (byte[])disks.BaseContents.Clone();
        Assert.Equal(IoStatus.Ok, overlay.WriteAt(512, TestData.Random(4096, 9)));
        Assert.Equal(1, overlay.Statistics.CopyUps);
        long copied = overlay.Statistics.CopiedBytes;

        byte[] again = TestData.Random(4096, 10);
        Assert.Equal(IoStatus.Ok, overlay.WriteAt(512, again));
        again.CopyTo(model, 512);

        Assert.Equal(1, overlay.Statistics.CopyUps);
        Assert.Equal(copied, overlay.Statistics.CopiedBytes);
        Assert.Equal(model, TestData.ReadAll(overlay));
    }

    [Fact]
    public void Qcow2_flush_after_writes_counts_its_metadata_writes_and_flushes()
    {
        using MemoryBlockDevice backing = TestData.Base(TestData.Random(DiskSize, 11));
        GrowableMemoryDevice file = TestData.NewOverlay(DiskSize, 65536, extendedL2: true, withBacking: true);
        using Qcow2Image image = TestData.Open(file, backing, MetadataPolicy.Flush);
        Assert.Equal(IoStatus.Ok, image.WriteAt(0, TestData.Random(4096, 12)));
        // Before the answer: the dirty bit (header sector, then a flush, once per open), the new L2
        // table, a flush (the table is durable before the L1 entry that points at it), the L1 run.
        // The write covers whole subclusters, so no data flush.
        Assert.Equal(3, image.Statistics.MetadataWrites);
        Assert.Equal(2, image.Statistics.MetadataFlushes);
        int deviceFlushes = file.FlushCount;

        Assert.Equal(IoStatus.Ok, image.Flush());

        // One refcount block (the new data cluster and L2 table), one L2 table, one L1 run, each
        // behind a flush, and a last flush after the L1 entry.
        Assert.Equal(6, image.Statistics.MetadataWrites);
        Assert.Equal(6, image.Statistics.MetadataFlushes);
        Assert.Equal(file.FlushCount - deviceFlushes, image.Statistics.MetadataFlushes - 2);

        // Nothing dirty: the guest's flush is one flush of the data, and no metadata is written.
        Assert.Equal(IoStatus.Ok, image.Flush());
        Assert.Equal(6, image.Statistics.MetadataWrites);
        Assert.Equal(7, image.Statistics.MetadataFlushes);

        // An allocating write into the table that exists: only that table; one flush because the
        // file grew (this memory file grows cluster by cluster; image files grow in 32 MiB steps),
        // so that its size is durable before an entry points into it.
        Assert.Equal(IoStatus.Ok, image.WriteAt(65536, TestData.Random(4096, 13)));
        Assert.Equal(7, image.Statistics.MetadataWrites);
        Assert.Equal(8, image.Statistics.MetadataFlushes);
        // A rewrite in place: nothing.
        Assert.Equal(IoStatus.Ok, image.WriteAt(65536, TestData.Random(4096, 14)));
        Assert.Equal(7, image.Statistics.MetadataWrites);
        Assert.Equal(8, image.Statistics.MetadataFlushes);
    }

    [Fact]
    public void Bitmap_flush_after_writes_counts_its_metadata_writes_and_flushes()
    {
        using BitmapDisks disks = BitmapDisks.Create(BitmapDeviceKind.Memory, DiskSize, BitmapOverlay.RequiredCowSize(DiskSize, BitmapGrain), seed: 13);
        using BitmapOverlay overlay = BitmapOverlay.Create(disks.Cow, disks.Base, new BitmapCreateOptions { GrainSize = BitmapGrain }, NotOwning);
        long writes = overlay.Statistics.MetadataWrites;
        long flushes = overlay.Statistics.MetadataFlushes;
        Assert.Equal(IoStatus.Ok, overlay.WriteAt(0, TestData.Random(4096, 14)));
        Assert.Equal(IoStatus.Ok, overlay.WriteAt(8 * BitmapGrain, TestData.Random(4096, 15)));
        // Before each answer, the map block the write changed; 4 KiB into 16 KiB grains copies up
        // the rest of the grain, so a data flush comes first (the base's bytes must not be lost).
        Assert.Equal(writes + 2, overlay.Statistics.MetadataWrites);
        Assert.Equal(flushes + 2, overlay.Statistics.MetadataFlushes);

        Assert.Equal(IoStatus.Ok, overlay.Flush());

        // Both grains' states share the first map block: one block written, between a data flush and a map flush.
        Assert.Equal(writes + 3, overlay.Statistics.MetadataWrites);
        Assert.Equal(flushes + 4, overlay.Statistics.MetadataFlushes);

        Assert.Equal(IoStatus.Ok, overlay.Flush());
        Assert.Equal(writes + 3, overlay.Statistics.MetadataWrites);
        Assert.Equal(flushes + 5, overlay.Statistics.MetadataFlushes);

        // A whole grain: its map block alone, no flush.
        Assert.Equal(IoStatus.Ok, overlay.WriteAt(16 * BitmapGrain, TestData.Random(BitmapGrain, 16)));
        Assert.Equal(writes + 4, overlay.Statistics.MetadataWrites);
        Assert.Equal(flushes + 5, overlay.Statistics.MetadataFlushes);
    }

    [Fact]
    public void Qcow2_hydrate_moves_hydration_progress_to_one_and_counts_the_copied_bytes()
    {
        byte[] model = TestData.Random(DiskSize, 16);
        using MemoryBlockDevice backing = TestData.Base(model);
        GrowableMemoryDevice file = TestData.NewOverlay(DiskSize, 65536, extendedL2: true, withBacking: true);
        using Qcow2Image image = TestData.Open(file, backing);
        Assert.Equal(IoStatus.Ok, image.WriteAt(0, TestData.Random(65536, 17)));
        Assert.Null(image.Statistics.HydrationProgress);
        long copiedBefore = image.Statistics.CopiedBytes;

        List<(double Expected, double? Seen)> progress = [];
        OverlayOperationResult result = image.Hydrate(new Qcow2HydrateOptions
        {
            DropBackingLink = false,
            Progress = (done, total) => progress.Add(((double)done / total, image.Statistics.HydrationProgress)),
        });

        Assert.True(result.Succeeded, result.Error);
        Assert.NotEmpty(progress);
        Assert.All(progress, p => Assert.Equal(p.Expected, p.Seen));
        Assert.Equal(1.0, image.Statistics.HydrationProgress);
        // The first cluster was the guest's already; the rest of the disk was copied from the base.
        Assert.Equal(DiskSize - 65536, result.BytesCopied);
        Assert.Equal(copiedBefore + result.BytesCopied, image.Statistics.CopiedBytes);
        Assert.Equal(0, image.Statistics.CopyUps);
    }

    [Fact]
    public void Bitmap_hydrate_moves_hydration_progress_to_one_and_counts_the_copied_bytes()
    {
        using BitmapDisks disks = BitmapDisks.Create(BitmapDeviceKind.Memory, DiskSize, BitmapOverlay.RequiredCowSize(DiskSize, BitmapGrain), seed: 18);
        using BitmapOverlay overlay = BitmapOverlay.Create(disks.Cow, disks.Base, new BitmapCreateOptions { GrainSize = BitmapGrain }, NotOwning);
        Assert.Equal(IoStatus.Ok, overlay.WriteAt(0, TestData.Random(BitmapGrain, 19)));
        Assert.Null(overlay.Statistics.HydrationProgress);
        Assert.Equal(0, overlay.Statistics.CopiedBytes);

        List<(double Expected, double? Seen)> progress = [];
        long bytesCopied = 0;
        Assert.Equal(IoStatus.Ok, overlay.Hydrate(new HydrateOptions
        {
            Progress = p =>
            {
                progress.Add(((double)p.GrainsDone / p.GrainCount, overlay.Statistics.HydrationProgress));
                bytesCopied = p.BytesCopied;
            },
        }));

        Assert.True(overlay.IsStandalone);
        Assert.Equal(1.0, overlay.Statistics.HydrationProgress);
        Assert.All(progress, p => Assert.Equal(p.Expected, p.Seen));
        Assert.Equal(DiskSize - BitmapGrain, bytesCopied);
        Assert.Equal(bytesCopied, overlay.Statistics.CopiedBytes);
        Assert.Equal(DiskSize, overlay.Statistics.OverlayAllocatedBytes);
    }
}
