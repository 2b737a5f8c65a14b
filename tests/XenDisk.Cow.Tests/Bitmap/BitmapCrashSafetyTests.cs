using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Provider;
using XenDisk.Cow.Tests.Bitmap.Support;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Cow.Tests.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Bitmap;

/// <summary>
/// Crash safety of bitmap overlays: every write and flush reaching the CoW device is recorded; crash
/// images are rebuilt from prefixes of that log (at durable points, around every internal flush and
/// at random points between), where the writes after the last completed device flush survive
/// whole, not at all, or sector by sector at random. Each image must pass the checker, open, and
/// read back, sector by sector, a value the guest may see (<see cref="SectorHistory"/>): what it
/// held at the last completed guest flush (Sync: the last acknowledged write) or anything written
/// since. Under Lazy, a sector of a discarded grain may also show its earlier contents.
/// The number of workloads per policy comes from <see cref="CrashRuns"/>.
/// </summary>
public sealed class BitmapCrashSafetyTests
{
    private const long BaseSize = 128 * 1024;

    /// <summary>A transient overlay promises nothing after a crash, so a few crash images per workload show whether it is harmless.</summary>
    private const int TransientPoints = 3;

    public static TheoryData<MetadataPolicy> DurablePolicies => [MetadataPolicy.Flush, MetadataPolicy.Sync, MetadataPolicy.Lazy];

    [Theory]
    [MemberData(nameof(DurablePolicies))]
    public void Everything_acknowledged_before_the_last_completed_flush_survives_any_crash(MetadataPolicy policy)
    {
        for (int seed = 0; seed < CrashRuns.WorkloadsPerPolicy; seed++)
        {
            RunWorkload(policy, seed);
        }
    }

    /// <summary>
    /// A transient overlay's storage after a crash is never taken for an overlay: opening it is
    /// refused (its header says transient, or it is still blank), and attaching the disk again with
    /// policy=transient starts afresh from the base.
    /// </summary>
    [Fact]
    public void A_crashed_transient_overlay_is_refused_or_discarded()
    {
        using TempDirectory directory = new();
        for (int seed = 0; seed < CrashRuns.WorkloadsPerPolicy; seed++)
        {
            RunTransientWorkload(seed, directory);
        }
    }

    private sealed record Workload(BitmapOverlay Overlay, CrashRecorder Recorder, MemoryBlockDevice Base, long CowSize, int Grain, long VirtualSize,
        SectorHistory History, List<int> DurablePoints, DiskModel Ranges, Random Random, string Name);

    private static Workload Start(MetadataPolicy policy, int seed)
    {
        var random = new Random(seed * 8 + (int)policy);
        int grain = new[] { 512, 4096, 16384, 65536 }[seed % 4];
        long virtualSize = seed % 3 == 0 ? BaseSize + 16 * 1024 : BaseSize;
        var baseDevice = new MemoryBlockDevice(BaseSize);
        random.NextBytes(baseDevice.Contents);
        long cowSize = BitmapOverlay.RequiredCowSize(virtualSize, grain);
        var recorder = new CrashRecorder(new MemoryBlockDevice(cowSize));
        var options = new BitmapOverlayOptions { Policy = policy, OwnsDevices = false };
        BitmapOverlay overlay = BitmapOverlay.Create(recorder, baseDevice, new BitmapCreateOptions { GrainSize = grain, VirtualSize = virtualSize }, options);
        byte[] initial = DiskModel.Extend(baseDevice.Contents.ToArray(), virtualSize);
        var history = new SectorHistory(initial);
        history.MarkDurable(recorder.Position);
        string name = $"bitmap {policy}, seed {seed} ({grain}-byte grains, {virtualSize}-byte disk over a {BaseSize}-byte base)";
        return new Workload(overlay, recorder, baseDevice, cowSize, grain, virtualSize, history, [recorder.Position],
            new DiskModel(initial, SectorHistory.SectorSize, grain, seed), random, name);
    }

    /// <summary>Runs one workload and checks its crash images (also the entry point for regression tests of one seed).</summary>
    internal static void RunWorkload(MetadataPolicy policy, int seed)
    {
        Workload w = Start(policy, seed);
        using MemoryBlockDevice baseDevice = w.Base;
        byte[] baseBefore = baseDevice.Contents.ToArray();
        Drive(w, policy);
        byte[] contents = new byte[w.VirtualSize];
        Assert.Equal(IoStatus.Ok, w.Overlay.ReadAt(0, contents));
        w.History.CheckLive(contents, $"{w.Name}: before closing");
        w.Overlay.Dispose();
        w.History.MarkDurable(w.Recorder.Position, deferredToo: true);
        w.DurablePoints.Add(w.Recorder.Position);
        Assert.Equal(baseBefore, baseDevice.Contents.ToArray());

        var replayer = new CrashReplayer(new byte[w.CowSize], w.Recorder.Snapshot());
        using var crashDevice = new MemoryBlockDevice(w.CowSize);
        foreach (int point in CrashRuns.ChoosePoints(replayer.Log, w.DurablePoints, w.Random, CrashRuns.PointsPerWorkload))
        {
            var unflushed = (UnflushedWrites)w.Random.Next(3);
            replayer.ImageAt(point, unflushed, w.Random).CopyTo(crashDevice.Contents);
            string where = $"{w.Name}: crash after {point} of {replayer.Length} device operations ({unflushed})";
            BitmapCheckReport report = BitmapChecker.Check(crashDevice);
            Assert.True(report.IsClean, $"{where}: checker found {string.Join("; ", report.Problems)}");
            using BitmapOverlay reopened = BitmapOverlay.Open(crashDevice, baseDevice, new BitmapOverlayOptions { ReadOnly = true, OwnsDevices = false });
            Assert.Equal(IoStatus.Ok, reopened.ReadAt(0, contents));
            // Flush and Lazy write map blocks before the answer: a power loss may keep one without the
            // data of a grain the guest wrote whole and never flushed (the grain then reads what the
            // data area held); copy-ups are flushed first, so sectors the guest did not write stay strict.
            Func<ulong, bool>? formerContents = policy is MetadataPolicy.Flush or MetadataPolicy.Lazy
                ? TestImages.FormerContents(new byte[w.CowSize], replayer.Log, point)
                : null;
            w.History.CheckDurable(contents, point, where, formerContents);
        }
    }

    private static void Drive(Workload w, MetadataPolicy policy)
    {
        int operations = 25 + w.Random.Next(25);
        for (int i = 0; i < operations; i++)
        {
            int roll = w.Random.Next(100);
            int start = w.Recorder.Position;
            if (roll < 20)
            {
                Assert.Equal(IoStatus.Ok, w.Overlay.Flush());
                if (policy != MetadataPolicy.Transient)
                {
                    w.History.MarkDurable(w.Recorder.Position);
                    w.DurablePoints.Add(w.Recorder.Position);
                }
                continue;
            }
            (long offset, int length) = w.Ranges.NextRange();
            if (roll < 75)
            {
                byte[] data = w.Ranges.NextData(length);
                Assert.Equal(IoStatus.Ok, w.Overlay.WriteAt(offset, data));
                w.History.Write(offset, data, start, acknowledged: true);
            }
            else
            {
                Assert.Equal(IoStatus.Ok, w.Overlay.Discard(offset, length, secure: false));
                RecordDiscard(w.History, offset, length, start, acknowledged: true, policy, w.Grain, w.VirtualSize);
            }
            if (policy == MetadataPolicy.Sync)
            {
                // Sync acknowledges a write only once it is durable.
                w.History.MarkDurable(w.Recorder.Position);
                w.DurablePoints.Add(w.Recorder.Position);
            }
        }
    }

    /// <summary>
    /// Records a discard: the grains it covers whole become DISCARDED, which Lazy may persist late
    /// (revertible); partly covered grains are written with zeros, which is an ordinary write.
    /// </summary>
    internal static void RecordDiscard(SectorHistory history, long offset, long length, int start, bool acknowledged, MetadataPolicy policy, int grain, long virtualSize)
    {
        long end = offset + length;
        long wholeStart = Math.Min(end, (offset + grain - 1) / grain * grain);
        long wholeEnd = end == virtualSize ? end : end / grain * grain;
        if (wholeEnd <= wholeStart)
        {
            history.Discard(offset, length, start, acknowledged);
            return;
        }
        if (wholeStart > offset)
        {
            history.Discard(offset, wholeStart - offset, start, acknowledged);
        }
        history.Discard(wholeStart, wholeEnd - wholeStart, start, acknowledged, revertible: policy == MetadataPolicy.Lazy);
        if (end > wholeEnd)
        {
            history.Discard(wholeEnd, end - wholeEnd, start, acknowledged);
        }
    }

    private static void RunTransientWorkload(int seed, TempDirectory directory)
    {
        Workload w = Start(MetadataPolicy.Transient, seed);
        using MemoryBlockDevice baseDevice = w.Base;
        Drive(w, MetadataPolicy.Transient);
        w.Overlay.Dispose();
        var replayer = new CrashReplayer(new byte[w.CowSize], w.Recorder.Snapshot());
        using var crashDevice = new MemoryBlockDevice(w.CowSize);
        foreach (int point in CrashRuns.ChoosePoints(replayer.Log, CrashRuns.Quarters(0, replayer.Length), w.Random, TransientPoints))
        {
            byte[] crashed = replayer.ImageAt(point, (UnflushedWrites)w.Random.Next(3), w.Random);
            crashed.CopyTo(crashDevice.Contents);
            string where = $"{w.Name}: crash after {point} of {replayer.Length} device operations";
            Assert.False(BitmapChecker.Check(crashDevice).IsClean, $"{where}: the checker accepted a transient overlay");
            Assert.Throws<StorageException>(() => BitmapOverlay.Open(crashDevice, baseDevice, new BitmapOverlayOptions { OwnsDevices = false }).Dispose());
            if (point == replayer.Length)
            {
                AssertReattachingDiscards(directory, crashed, baseDevice.Contents.ToArray(), w.Grain, where);
            }
        }
    }

    /// <summary>The leftover storage of a transient overlay, attached again with policy=transient, starts afresh: the disk reads as the base.</summary>
    private static void AssertReattachingDiscards(TempDirectory directory, byte[] leftover, byte[] baseContents, int grain, string where)
    {
        string basePath = directory.File("transient-base.raw");
        string overlayPath = directory.File("transient.bitmap");
        File.WriteAllBytes(basePath, baseContents);
        File.WriteAllBytes(overlayPath, leftover);
        var provider = new CowDiskProvider(new CowProviderOptions { AllowedBaseDirectories = [directory.Path] });
        using (IBlockDevice disk = provider.Open(new DiskSpecification($"cow:{basePath},{overlayPath},format=bitmap,policy=transient,grain={grain}", ReadOnly: false)))
        {
            byte[] contents = new byte[disk.Info.SizeBytes];
            Assert.Equal(IoStatus.Ok, disk.ReadAt(0, contents));
            Assert.True(baseContents.AsSpan().SequenceEqual(contents), $"{where}: a reattached transient overlay does not read as the base");
        }
        Assert.False(File.Exists(overlayPath), $"{where}: the transient overlay file outlived its disk");
    }
}
