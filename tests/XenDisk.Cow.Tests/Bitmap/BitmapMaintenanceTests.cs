using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Tests.Bitmap.Support;
using XenDisk.Cow.Tests.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Bitmap;

/// <summary>Hydrate, commit, the checker, transient overlays, batching of map writes, unclean shutdown.</summary>
public sealed class BitmapMaintenanceTests
{
    private const long Size = 2L * 1024 * 1024;
    private static readonly BitmapOverlayOptions NotOwning = new() { OwnsDevices = false };

    [Theory]
    [InlineData(BitmapDeviceKind.Memory, 4096)]
    [InlineData(BitmapDeviceKind.Memory, 512)]
    [InlineData(BitmapDeviceKind.Files, 65536)]
    public void Hydrated_overlays_read_the_same_with_the_base_replaced_by_garbage(BitmapDeviceKind kind, int grain)
    {
        long virtualSize = Size + 64 * 1024;
        using BitmapDisks disks = BitmapDisks.Create(kind, Size, BitmapOverlay.RequiredCowSize(virtualSize, grain), seed: grain);
        var model = new DiskModel(DiskModel.Extend(disks.BaseContents, virtualSize), 512, grain, seed: 3);
        List<GrainProgress> progress = [];
        using (BitmapOverlay overlay = BitmapOverlay.Create(disks.Cow, disks.Base, new BitmapCreateOptions { GrainSize = grain, VirtualSize = virtualSize }, NotOwning))
        {
            model.Run(overlay, 100);
            Assert.Equal(IoStatus.Ok, overlay.Hydrate(new HydrateOptions { Progress = progress.Add, BytesPerSecond = 1L << 40 }));
            Assert.True(overlay.IsStandalone);
            Assert.Equal(0, overlay.CountGrains().Base);
            model.Verify(overlay);
        }
        Assert.NotEmpty(progress);
        Assert.Equal(progress[^1].GrainCount, progress[^1].GrainsDone);
        Assert.True(progress.Zip(progress.Skip(1)).All(pair => pair.First.GrainsDone < pair.Second.GrainsDone));

        disks.ReopenCow();
        using var garbage = new MemoryBlockDevice(Size);
        new Random(77).NextBytes(garbage.Contents);
        using (BitmapOverlay standalone = BitmapOverlay.Open(disks.Cow, garbage, NotOwning))
        {
            Assert.True(standalone.IsStandalone);
            model.Verify(standalone);
            model.Run(standalone, 50);
            model.Verify(standalone);
        }
        using (BitmapOverlay withoutBase = BitmapOverlay.Open(disks.Cow, null, NotOwning))
        {
            model.Verify(withoutBase);
        }
        Assert.True(BitmapChecker.Check(disks.Cow).IsClean);
        Assert.Equal(disks.BaseContents, disks.ReadBase());
    }

    [Fact]
    public void An_interrupted_hydration_resumes_where_the_map_says_and_copies_only_the_rest()
    {
        const int grain = 4096;
        using BitmapDisks disks = BitmapDisks.Create(BitmapDeviceKind.Memory, Size, BitmapOverlay.RequiredCowSize(Size, grain), seed: 21);
        var model = new DiskModel((byte[])disks.BaseContents.Clone(), 512, grain, seed: 4);
        using var cancel = new CancellationTokenSource();
        using (BitmapOverlay overlay = BitmapOverlay.Create(disks.Cow, disks.Base, options: NotOwning))
        {
            model.Run(overlay, 60);
            var options = new HydrateOptions
            {
                CheckpointBytes = 256 * 1024,
                Progress = p =>
                {
                    if (p.GrainsDone >= p.GrainCount / 2)
                    {
                        cancel.Cancel();
                    }
                },
            };
            Assert.Throws<OperationCanceledException>(() => overlay.Hydrate(options, cancel.Token));
            Assert.False(overlay.IsStandalone);
        }
        long copiedSecondTime = 0;
        using (BitmapOverlay resumed = BitmapOverlay.Open(disks.Cow, disks.Base, NotOwning))
        {
            long left = resumed.CountGrains().Base;
            Assert.InRange(left, 1, Size / grain / 2);
            Assert.Equal(IoStatus.Ok, resumed.Hydrate(new HydrateOptions { Progress = p => copiedSecondTime = p.BytesCopied }));
            Assert.Equal(left * grain, copiedSecondTime);
            Assert.True(resumed.IsStandalone);
        }
        using var garbage = new MemoryBlockDevice(Size);
        garbage.Contents.Fill(0xEE);
        using BitmapOverlay reopened = BitmapOverlay.Open(disks.Cow, garbage, NotOwning);
        model.Verify(reopened);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Commit_writes_the_virtual_disk_into_the_base(bool clear)
    {
        const int grain = 4096;
        using BitmapDisks disks = BitmapDisks.Create(BitmapDeviceKind.Memory, Size, BitmapOverlay.RequiredCowSize(Size, grain), seed: 31, writableBase: true);
        var model = new DiskModel((byte[])disks.BaseContents.Clone(), 512, grain, seed: 5);
        using (BitmapOverlay overlay = BitmapOverlay.Create(disks.Cow, disks.Base, options: NotOwning))
        {
            model.Run(overlay, 150);
            Assert.Equal(IoStatus.Ok, overlay.Commit(new CommitOptions { ClearOverlay = clear }));
            DiskModel.AssertSame(model.Contents, disks.ReadBase(), 0);
            GrainCounts counts = overlay.CountGrains();
            Assert.Equal(clear ? 0 : counts.Mapped, counts.Mapped);
            Assert.Equal(clear, counts.Mapped + counts.Discarded == 0);
            model.Verify(overlay);
            model.Run(overlay, 50);
            model.Verify(overlay);
        }
        using BitmapOverlay reopened = BitmapOverlay.Open(disks.Cow, disks.Base, NotOwning);
        model.Verify(reopened);
    }

    [Fact]
    public void Commit_needs_a_writable_base()
    {
        using BitmapDisks disks = BitmapDisks.Create(BitmapDeviceKind.Memory, Size, BitmapOverlay.RequiredCowSize(Size), seed: 32);
        using BitmapOverlay overlay = BitmapOverlay.Create(disks.Cow, disks.Base, options: NotOwning);
        Assert.Equal(IoStatus.Ok, overlay.WriteAt(0, new byte[4096]));
        Assert.Throws<InvalidOperationException>(() => overlay.Commit());
        Assert.Equal(disks.BaseContents, disks.ReadBase());
    }

    [Fact]
    public void The_checker_reports_impossible_maps_and_repair_makes_them_open_again()
    {
        const int grain = 4096;
        using BitmapDisks disks = BitmapDisks.Create(BitmapDeviceKind.Memory, Size, BitmapOverlay.RequiredCowSize(Size, grain), seed: 41);
        byte[] data = new byte[grain];
        new Random(1).NextBytes(data);
        using (BitmapOverlay overlay = BitmapOverlay.Create(disks.Cow, disks.Base, options: NotOwning))
        {
            Assert.Equal(IoStatus.Ok, overlay.WriteAt(0, data));
            Assert.Equal(IoStatus.Ok, overlay.WriteAt(grain, data));
        }
        Assert.True(BitmapChecker.Check(disks.Cow).IsClean);

        // Grain 1 both mapped and discarded (state 3); bits set past the last of the 512 grains.
        Span<byte> map = ((MemoryBlockDevice)disks.Cow).Contents.Slice(4096, 4096);
        map[0] |= 0b1100;
        map[512 / 4] = 0x01;
        map[4000] = 0x80;
        BitmapCheckReport report = BitmapChecker.Check(disks.Cow);
        Assert.False(report.IsClean);
        Assert.Equal(1, report.Counts.Invalid);
        Assert.Equal(2, report.Counts.NonZeroBytesBeyondEnd);
        Assert.Contains(report.Problems, p => p.Contains("both mapped and discarded", StringComparison.Ordinal));
        Assert.Contains(report.Problems, p => p.Contains("past the last grain", StringComparison.Ordinal));
        var refused = Assert.Throws<StorageException>(() => BitmapOverlay.Open(disks.Cow, disks.Base, NotOwning));
        Assert.Contains("run the bitmap checker with repair", refused.Message, StringComparison.Ordinal);

        BitmapCheckReport repaired = BitmapChecker.Check(disks.Cow, repair: true);
        Assert.True(repaired.Repaired);
        Assert.True(BitmapChecker.Check(disks.Cow).IsClean);
        using BitmapOverlay reopened = BitmapOverlay.Open(disks.Cow, disks.Base, NotOwning);
        Assert.Equal(GrainState.Mapped, reopened.GetGrainState(0));
        Assert.Equal(GrainState.Discarded, reopened.GetGrainState(grain));
        byte[] read = new byte[2 * grain];
        Assert.Equal(IoStatus.Ok, reopened.ReadAt(0, read));
        Assert.Equal(data, read[..grain]);
        Assert.All(read[grain..], b => Assert.Equal(0, b));
    }

    [Fact]
    public void The_corrupt_flag_is_refused_until_repair_clears_it()
    {
        using BitmapDisks disks = BitmapDisks.Create(BitmapDeviceKind.Memory, Size, BitmapOverlay.RequiredCowSize(Size), seed: 42);
        using (BitmapOverlay.Create(disks.Cow, disks.Base, options: NotOwning))
        {
        }
        BitmapHeader corrupt = BitmapOverlay.ReadHeader(disks.Cow) with { IncompatibleFeatures = BitmapFormat.IncompatibleCorrupt };
        corrupt.WriteTo(((MemoryBlockDevice)disks.Cow).Contents);
        Assert.Contains("marked corrupt", Assert.Throws<StorageException>(() => BitmapOverlay.Open(disks.Cow, disks.Base, NotOwning)).Message, StringComparison.Ordinal);
        Assert.Contains(BitmapChecker.Check(disks.Cow).Problems, p => p.Contains("corrupt", StringComparison.Ordinal));
        Assert.True(BitmapChecker.Check(disks.Cow, repair: true).Repaired);
        using BitmapOverlay overlay = BitmapOverlay.Open(disks.Cow, disks.Base, NotOwning);
    }

    [Fact]
    public void A_transient_overlay_never_flushes_or_writes_metadata_and_cannot_be_reopened()
    {
        using BitmapDisks disks = BitmapDisks.Create(BitmapDeviceKind.Memory, Size, BitmapOverlay.RequiredCowSize(Size), seed: 51);
        var recording = new CrashRecorder(disks.Cow);
        var model = new DiskModel((byte[])disks.BaseContents.Clone(), 512, 4096, seed: 6);
        int afterCreate;
        using (BitmapOverlay overlay = BitmapOverlay.Create(recording, disks.Base, options: NotOwning with { Policy = MetadataPolicy.Transient }))
        {
            afterCreate = recording.Position;
            model.Run(overlay, 200);
            model.Verify(overlay);
        }
        DeviceOperation[] log = recording.Snapshot();
        Assert.DoesNotContain(log, io => io.Kind == DeviceOperationKind.Flush);
        long dataOffset = BitmapOverlay.ReadHeader(disks.Cow).DataOffset;
        // After the header, only data-area writes: no map block, no header rewrite.
        Assert.All(log[afterCreate..], io => Assert.True(io.Offset >= dataOffset, $"a write at {io.Offset} is not in the data area"));
        Assert.Contains("transient", Assert.Throws<StorageException>(() => BitmapOverlay.Open(disks.Cow, disks.Base, NotOwning)).Message, StringComparison.Ordinal);
        Assert.Throws<StorageException>(() => BitmapOverlay.Open(disks.Cow, disks.Base, NotOwning with { Policy = MetadataPolicy.Transient }));
    }

    [Theory]
    [InlineData(MetadataPolicy.Flush)]
    [InlineData(MetadataPolicy.Lazy)]
    public void Many_writes_between_two_flushes_write_each_dirty_map_block_once(MetadataPolicy policy)
    {
        // 32 MiB at 512-byte grains: 65536 grains, one 4 KiB map block (16384 grains) per 8 MiB.
        const long size = 32L * 1024 * 1024;
        using var baseDevice = new MemoryBlockDevice(size);
        var recording = new CrashRecorder(new MemoryBlockDevice(BitmapOverlay.RequiredCowSize(size, 512)));
        using BitmapOverlay overlay = BitmapOverlay.Create(recording, baseDevice, new BitmapCreateOptions { GrainSize = 512 }, NotOwning with { Policy = policy });
        BitmapHeader header = overlay.Header;
        bool IsMapWrite(DeviceOperation io) => io.Kind != DeviceOperationKind.Flush && io.Offset >= header.BitmapOffset && io.Offset < header.BitmapOffset + header.BitmapLength;

        var random = new Random(7);
        byte[] data = new byte[4096];
        int before = recording.Position;
        for (int i = 0; i < 500; i++)
        {
            // Pages in the first and third 8 MiB: map blocks 0 and 2.
            long page = random.Next(2048) + (i % 2 == 0 ? 0 : 4096);
            Assert.Equal(IoStatus.Ok, overlay.WriteAt(page * 4096, data));
        }
        // Map before the answer: a write that mapped new grains has its map block written into the
        // file before it is answered, that block alone and without a flush (whole grains: no copy-up).
        DeviceOperation[] between = recording.Snapshot()[before..];
        Assert.DoesNotContain(between, io => io.Kind == DeviceOperationKind.Flush);
        DeviceOperation[] published = [.. between.Where(IsMapWrite)];
        Assert.InRange(published.Length, 1, 500);
        Assert.All(published, io => Assert.True(io.Data!.Length == 4096 && (io.Offset == header.BitmapOffset || io.Offset == header.BitmapOffset + 2 * 4096), $"map write at {io.Offset}, {io.Data!.Length} bytes"));
        int beforeFlush = recording.Position;
        Assert.Equal(IoStatus.Ok, overlay.Flush());
        DeviceOperation[] flush = recording.Snapshot()[beforeFlush..];
        DeviceOperation[] mapWrites = [.. flush.Where(IsMapWrite)];
        Assert.Equal(2, mapWrites.Length);
        Assert.Equal([header.BitmapOffset, header.BitmapOffset + 2 * 4096], mapWrites.Select(io => io.Offset).Order().ToArray());
        // Data flushed before the map blocks, and the map flushed before the flush returns.
        Assert.True(flush[0].Kind == DeviceOperationKind.Flush);
        Assert.True(flush[^1].Kind == DeviceOperationKind.Flush);
        // Nothing changed since: the next flush writes no map block.
        int again = recording.Position;
        Assert.Equal(IoStatus.Ok, overlay.Flush());
        Assert.DoesNotContain(recording.Snapshot()[again..], IsMapWrite);
    }

    [Fact]
    public void Lazy_defers_discards_to_close_but_flushes_writes()
    {
        using BitmapDisks disks = BitmapDisks.Create(BitmapDeviceKind.Memory, Size, BitmapOverlay.RequiredCowSize(Size), seed: 61);
        var recording = new CrashRecorder(disks.Cow);
        using (BitmapOverlay overlay = BitmapOverlay.Create(recording, disks.Base, options: NotOwning with { Policy = MetadataPolicy.Lazy }))
        {
            Assert.Equal(IoStatus.Ok, overlay.Discard(0, 64 * 1024, secure: false));
            int before = recording.Position;
            Assert.Equal(IoStatus.Ok, overlay.Flush());
            Assert.DoesNotContain(recording.Snapshot()[before..], io => io.Kind != DeviceOperationKind.Flush && io.Offset == overlay.Header.BitmapOffset);
            Assert.Equal(IoStatus.Ok, overlay.WriteAt(128 * 1024, new byte[4096]));
            before = recording.Position;
            Assert.Equal(IoStatus.Ok, overlay.Flush());
            Assert.Contains(recording.Snapshot()[before..], io => io.Kind != DeviceOperationKind.Flush && io.Offset == overlay.Header.BitmapOffset);
        }
        using BitmapOverlay reopened = BitmapOverlay.Open(disks.Cow, disks.Base, NotOwning);
        Assert.Equal(GrainState.Discarded, reopened.GetGrainState(0));
        Assert.Equal(GrainState.Mapped, reopened.GetGrainState(128 * 1024));
    }

    [Fact]
    public void An_unclean_shutdown_is_reported_and_flushed_data_is_intact()
    {
        using BitmapDisks disks = BitmapDisks.Create(BitmapDeviceKind.Memory, Size, BitmapOverlay.RequiredCowSize(Size), seed: 71);
        var model = new DiskModel((byte[])disks.BaseContents.Clone(), 512, 4096, seed: 8);
        BitmapOverlay overlay = BitmapOverlay.Create(disks.Cow, disks.Base, options: NotOwning);
        model.Run(overlay, 100);
        Assert.Equal(IoStatus.Ok, overlay.Flush());
        // The "crash": a copy of the device as it is, without closing.
        using var crashed = new MemoryBlockDevice(disks.Cow.Info.SizeBytes);
        ((MemoryBlockDevice)disks.Cow).Contents.CopyTo(crashed.Contents);
        Assert.True(BitmapOverlay.ReadHeader(crashed).IsDirty);
        BitmapCheckReport report = BitmapChecker.Check(crashed);
        Assert.True(report.IsClean);
        Assert.True(report.WasDirty);
        using (BitmapOverlay reopened = BitmapOverlay.Open(crashed, disks.Base, NotOwning))
        {
            Assert.True(reopened.OpenedAfterUncleanShutdown);
            model.Verify(reopened);
        }
        Assert.False(BitmapOverlay.ReadHeader(crashed).IsDirty);
        overlay.Dispose();
    }
}
