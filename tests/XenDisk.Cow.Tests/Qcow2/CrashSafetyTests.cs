using XenDisk.Cow.Policies;
using XenDisk.Cow.Provider;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Cow.Tests.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2;

/// <summary>
/// Crash safety of qcow2 overlays: a seeded random workload (writes, discards, flushes) runs over a
/// device that records every write, flush and growth reaching the image file; then, for crash
/// positions at every kind of step (see <see cref="CrashRuns.ChoosePoints"/>), the file a crash could
/// leave behind is rebuilt (flushed writes kept, later ones kept, lost, or kept sector by sector at
/// random), checked, opened and read. At most leaks are allowed (Lazy: a dirty image whose refcounts
/// are rebuilt on open), and every sector must read what it held at the last completed guest flush
/// (Sync: the last acknowledged write) or data written since (<see cref="SectorHistory"/>).
/// The number of workloads per policy comes from <see cref="CrashRuns"/>.
/// </summary>
[Trait(Needs.Key, Needs.Qemu)]
public sealed class CrashSafetyTests
{
    private const int VirtualSize = 256 * 1024;

    /// <summary>(cluster size, extended L2): tiny clusters give many L2 tables and refcount blocks, large ones copy-up of subclusters.</summary>
    private static readonly (int ClusterSize, bool ExtendedL2)[] Layouts = [(512, false), (4096, false), (16384, true), (65536, true), (65536, false), (2048, false)];

    /// <summary>A transient overlay promises nothing after a crash, so a few crash images per workload show whether it is harmless.</summary>
    private const int TransientPoints = 3;

    public static TheoryData<MetadataPolicy> DurablePolicies => [MetadataPolicy.Flush, MetadataPolicy.Sync, MetadataPolicy.Lazy];

    [Theory]
    [MemberData(nameof(DurablePolicies))]
    public void Everything_acknowledged_before_the_last_completed_flush_survives_any_crash(MetadataPolicy policy)
    {
        using TempDirectory directory = new();
        int crashImages = 0;
        for (int seed = 0; seed < CrashRuns.WorkloadsPerPolicy; seed++)
        {
            RunWorkload(policy, seed, directory, ref crashImages);
        }
    }

    /// <summary>
    /// Flush and Lazy write the mapping of answered writes into the file before the answer, and the
    /// page cache may write any subset of what followed the last flush to the disk before a power
    /// loss (whole writes or single sectors). Every such image opens, holds what was flushed, and
    /// hands out no cluster an entry references: after the reopen, new writes over random ranges
    /// change those ranges and nothing else, and the image closes clean for our checker and QEMU's.
    /// </summary>
    [Theory]
    [InlineData(MetadataPolicy.Flush)]
    [InlineData(MetadataPolicy.Lazy)]
    public void A_power_loss_keeps_flushed_data_and_never_hands_out_a_referenced_cluster(MetadataPolicy policy)
    {
        using TempDirectory directory = new();
        int crashImages = 0;
        for (int seed = 0; seed < CrashRuns.WorkloadsPerPolicy; seed++)
        {
            Workload w = Start(policy, 1000 + seed);
            using MemoryBlockDevice? backing = w.Backing;
            Drive(w, policy);
            w.Image.Dispose();
            var replayer = new CrashReplayer(w.Initial, w.Recorder.Snapshot());
            if (backing is not null)
            {
                File.WriteAllBytes(directory.File("base.raw"), backing.Contents.ToArray());
            }
            foreach (int point in CrashRuns.ChoosePoints(replayer.Log, w.DurablePoints, w.Random, CrashRuns.PointsPerWorkload))
            {
                var unflushed = w.Random.Next(2) == 0 ? UnflushedWrites.KeptPerWrite : UnflushedWrites.KeptPerSector;
                byte[] crashed = replayer.ImageAt(point, unflushed, w.Random);
                string where = $"{w.Name}: power loss after {point} of {replayer.Length} device operations ({unflushed})";
                var device = new GrowableMemoryDevice(crashed);
                byte[] before;
                using (Qcow2Image image = Qcow2Image.Open(device, w.Backing, new Qcow2OpenOptions { Policy = policy, OwnsDevices = false }))
                {
                    before = TestData.ReadAll(image);
                    w.History.CheckDurable(before, point, where, TestImages.FormerContents(w.Initial, replayer.Log, point));
                    byte[] expected = (byte[])before.Clone();
                    for (int i = 0; i < 12; i++)
                    {
                        (long offset, int length) = NextRange(w.Random, image.ClusterSize);
                        byte[] data = new byte[length];
                        w.Random.NextBytes(data);
                        Assert.Equal(IoStatus.Ok, image.WriteAt(offset, data));
                        data.CopyTo(expected, offset);
                    }
                    byte[] after = TestData.ReadAll(image);
                    int differs = after.AsSpan().CommonPrefixLength(expected);
                    Assert.True(differs == expected.Length, $"{where}: after new writes, byte {differs} changed although no write covered it: a referenced cluster was handed out again");
                    Assert.Null(image.Failure);
                    Assert.Equal(IoStatus.Ok, image.Close());
                }
                Qcow2CheckReport report = Qcow2Checker.Check(device);
                Assert.True(report.IsClean, $"{where}, after reopening and writing: {string.Join("\n", report.Messages)}");
                if (CrashRuns.RunQemuCheck(crashImages++, lastPrefixOfWorkload: false))
                {
                    QemuCheck(directory, device.ToArray(), where + ", after reopening and writing");
                }
            }
        }
    }

    /// <summary>
    /// Transient overlays promise nothing after a crash: what matters is that the leftover file is
    /// harmless. Every crash image opens (read-only) or is refused with a StorageException, never
    /// anything worse, and attaching the disk again with policy=transient discards it: the disk
    /// reads as the base.
    /// </summary>
    [Fact]
    public void A_crashed_transient_overlay_opens_cleanly_or_is_discarded()
    {
        using TempDirectory directory = new();
        for (int seed = 0; seed < CrashRuns.WorkloadsPerPolicy; seed++)
        {
            RunTransientWorkload(seed, directory);
        }
    }

    private sealed record Workload(Qcow2Image Image, CrashRecorder Recorder, byte[] Initial, MemoryBlockDevice? Backing, SectorHistory History, List<int> DurablePoints, Random Random, string Name);

    private static Workload Start(MetadataPolicy policy, int seed)
    {
        var random = new Random(seed * 8 + (int)policy);
        (int clusterSize, bool extendedL2) = Layouts[seed % Layouts.Length];
        int refcountOrder = new[] { 4, 0, 1, 2, 3, 5, 6 }[seed / Layouts.Length % 7];
        if (clusterSize > 4096 && refcountOrder < 4)
        {
            // Narrow refcounts in large clusters make blocks of up to half a million entries: nothing
            // new for crash safety, only a slow checker. Small clusters cover the narrow widths.
            refcountOrder = 4;
        }
        bool withBacking = seed % 7 != 3;
        int baseSize = seed % 5 == 1 ? VirtualSize - 32 * 1024 : VirtualSize;
        long l2Cache = random.Next(3) == 0 ? 2L * clusterSize : 0;

        byte[] initial = new byte[VirtualSize];
        MemoryBlockDevice? backing = null;
        if (withBacking)
        {
            backing = new MemoryBlockDevice(baseSize);
            random.NextBytes(backing.Contents);
            backing.Contents.CopyTo(initial);
        }
        GrowableMemoryDevice file = new();
        Qcow2Image.Create(file, new Qcow2CreateOptions
        {
            VirtualSize = VirtualSize,
            ClusterSize = clusterSize,
            ExtendedL2 = extendedL2,
            RefcountOrder = refcountOrder,
            BackingFile = withBacking ? "base.raw" : null,
            BackingFormat = withBacking ? "raw" : null,
            LazyRefcounts = policy == MetadataPolicy.Lazy,
        });
        byte[] fileBefore = file.ToArray();
        var recorder = new CrashRecorder(file);
        Qcow2Image image = Qcow2Image.Open(recorder, backing, new Qcow2OpenOptions { Policy = policy, OwnsDevices = false, L2CacheBytes = l2Cache });
        var history = new SectorHistory(initial);
        history.MarkDurable(recorder.Position);
        string name = $"qcow2 {policy}, seed {seed} ({clusterSize}-byte clusters{(extendedL2 ? ", subclusters" : "")}, refcount order {refcountOrder}, " +
            $"{(withBacking ? $"{baseSize}-byte base" : "no base")}, {(l2Cache > 0 ? "two-table L2 cache" : "default L2 cache")})";
        return new Workload(image, recorder, fileBefore, backing, history, [recorder.Position], random, name);
    }

    /// <summary>Runs one workload and checks its crash images (also the entry point for regression tests of one seed).</summary>
    internal static void RunWorkload(MetadataPolicy policy, int seed, TempDirectory directory, ref int crashImages)
    {
        Workload w = Start(policy, seed);
        using MemoryBlockDevice? backing = w.Backing;
        Drive(w, policy);
        byte[] contents = TestData.ReadAll(w.Image);
        w.History.CheckLive(contents, $"{w.Name}: before closing");
        Assert.Equal(IoStatus.Ok, w.Image.Close());
        w.History.MarkDurable(w.Recorder.Position, deferredToo: true);
        w.DurablePoints.Add(w.Recorder.Position);

        var replayer = new CrashReplayer(w.Initial, w.Recorder.Snapshot());
        if (backing is not null)
        {
            File.WriteAllBytes(directory.File("base.raw"), backing.Contents.ToArray());
        }
        foreach (int point in CrashRuns.ChoosePoints(replayer.Log, w.DurablePoints, w.Random, CrashRuns.PointsPerWorkload))
        {
            var unflushed = (UnflushedWrites)w.Random.Next(3);
            byte[] crashed = replayer.ImageAt(point, unflushed, w.Random);
            bool last = point == replayer.Length;
            CheckCrashImage(w, policy, crashed, point, $"{w.Name}: crash after {point} of {replayer.Length} device operations ({unflushed})",
                CrashRuns.RunQemuCheck(crashImages++, last) ? directory : null, last);
        }
    }

    private static void Drive(Workload w, MetadataPolicy policy)
    {
        Random random = w.Random;
        int operations = 20 + random.Next(40);
        int cluster = w.Image.ClusterSize;
        for (int i = 0; i < operations; i++)
        {
            int roll = random.Next(100);
            int start = w.Recorder.Position;
            if (roll >= 85)
            {
                Assert.Equal(IoStatus.Ok, w.Image.Flush());
                if (policy != MetadataPolicy.Transient)
                {
                    w.History.MarkDurable(w.Recorder.Position);
                    w.DurablePoints.Add(w.Recorder.Position);
                }
                continue;
            }
            (long offset, int length) = NextRange(random, cluster);
            if (roll < 65)
            {
                byte[] data = new byte[length];
                random.NextBytes(data);
                Assert.Equal(IoStatus.Ok, w.Image.WriteAt(offset, data));
                w.History.Write(offset, data, start, acknowledged: true);
            }
            else
            {
                Assert.Equal(IoStatus.Ok, w.Image.Discard(offset, length, secure: false));
                w.History.Discard(offset, length, start, acknowledged: true);
            }
            if (policy == MetadataPolicy.Sync)
            {
                w.History.MarkDurable(w.Recorder.Position);
                w.DurablePoints.Add(w.Recorder.Position);
            }
        }
    }

    /// <summary>A sector-aligned range of up to about three clusters (at most 64 KiB), cluster-aligned now and then.</summary>
    private static (long Offset, int Length) NextRange(Random random, int cluster)
    {
        int sectors = VirtualSize / 512;
        int start = random.Next(sectors);
        if (random.Next(3) == 0)
        {
            start = start * 512 / cluster * cluster / 512;
        }
        int maxSectors = Math.Min(128, 3 * cluster / 512 + 2);
        int length = Math.Min(1 + random.Next(maxSectors), sectors - start);
        return (start * 512L, length * 512);
    }

    private static void CheckCrashImage(Workload w, MetadataPolicy policy, byte[] crashed, int point, string where, TempDirectory? qemu, bool last)
    {
        var device = new GrowableMemoryDevice(crashed);
        // Flush and Lazy write the mapping of answered writes into the file before the answer and
        // keep the dirty bit set meanwhile: such an image's refcounts may be stale by design, and it
        // is repaired by rebuilding them on open (ours and QEMU's). A clean image must be consistent as is.
        bool dirty = TestImages.IsDirty(crashed);
        if (!dirty)
        {
            Qcow2CheckReport report = Qcow2Checker.Check(device);
            Assert.True(report.Corruptions == 0, $"{where}: {string.Join("\n", report.Messages)}");
            if (last)
            {
                Assert.True(report.IsClean, $"{where}: a clean close left {report.Leaks} leaked clusters: {string.Join("\n", report.Messages)}");
            }
            if (qemu is not null)
            {
                QemuCheck(qemu, crashed, where);
            }
        }
        else if (qemu is not null)
        {
            // What QEMU does when it opens a dirty image: repair it from the L1/L2 tables.
            QemuCheck(qemu, crashed, where + " (repaired by qemu-img check -r all)", "-r", "all");
        }
        Func<ulong, bool>? formerContents = policy is MetadataPolicy.Flush or MetadataPolicy.Lazy ? TestImages.FormerContents(w.Initial, w.Recorder.Snapshot(), point) : null;
        using (Qcow2Image image = Qcow2Image.Open(device, w.Backing, new Qcow2OpenOptions { Policy = policy, OwnsDevices = false }))
        {
            w.History.CheckDurable(TestData.ReadAll(image), point, where, formerContents);
            Assert.Equal(IoStatus.Ok, image.Close());
        }
        Qcow2CheckReport after = Qcow2Checker.Check(device);
        Assert.True(after.Corruptions == 0, $"{where}, after reopening: {string.Join("\n", after.Messages)}");
        if (dirty)
        {
            Assert.True(after.IsClean, $"{where}: refcounts were not rebuilt on reopening: {string.Join("\n", after.Messages)}");
            if (qemu is not null)
            {
                QemuCheck(qemu, device.ToArray(), where + ", after reopening");
            }
        }
    }

    private static void QemuCheck(TempDirectory directory, byte[] image, string where, params string[] options)
    {
        string path = directory.File("crashed.qcow2");
        File.WriteAllBytes(path, image);
        (int exitCode, string output) = QemuTools.Run(QemuTools.QemuImg, ["check", .. options, "-f", "qcow2", path]);
        // Exit code 3 means leaks only; 2 would be corruption.
        Assert.True(exitCode is 0 or 3, $"{where}: qemu-img check exited with {exitCode}:\n{output}");
    }

    private static void RunTransientWorkload(int seed, TempDirectory directory)
    {
        Workload w = Start(MetadataPolicy.Transient, seed);
        using MemoryBlockDevice? backing = w.Backing;
        Drive(w, MetadataPolicy.Transient);
        w.History.CheckLive(TestData.ReadAll(w.Image), $"{w.Name}: before closing");
        w.Image.Dispose();
        var replayer = new CrashReplayer(w.Initial, w.Recorder.Snapshot());
        foreach (int point in CrashRuns.ChoosePoints(replayer.Log, CrashRuns.Quarters(w.DurablePoints[0], replayer.Length), w.Random, TransientPoints))
        {
            byte[] crashed = replayer.ImageAt(point, (UnflushedWrites)w.Random.Next(3), w.Random);
            var device = new GrowableMemoryDevice(crashed);
            _ = Qcow2Checker.Check(device);
            try
            {
                using Qcow2Image image = Qcow2Image.Open(device, w.Backing, new Qcow2OpenOptions { ReadOnly = true, OwnsDevices = false });
                byte[] contents = new byte[VirtualSize];
                _ = image.ReadAt(0, contents); // any status: the contents of a transient overlay are not promised
            }
            catch (StorageException)
            {
                // Refused: as good as discarded.
            }
            if (point == replayer.Length && w.Backing is not null)
            {
                AssertReattachingDiscards(directory, crashed, w.Backing.Contents.ToArray(), w.Name);
            }
        }
    }

    /// <summary>The leftover file of a transient overlay, attached again with policy=transient, is replaced: the disk reads as the base.</summary>
    private static void AssertReattachingDiscards(TempDirectory directory, byte[] leftover, byte[] baseContents, string where)
    {
        string basePath = directory.File("transient-base.raw");
        string overlayPath = directory.File("transient.qcow2");
        File.WriteAllBytes(basePath, baseContents);
        File.WriteAllBytes(overlayPath, leftover);
        var provider = new CowDiskProvider(new CowProviderOptions { AllowedBaseDirectories = [directory.Path] });
        using (IBlockDevice disk = provider.Open(new DiskSpecification($"cow:{basePath},{overlayPath},format=qcow2,policy=transient", ReadOnly: false)))
        {
            byte[] contents = TestData.ReadAll(disk);
            byte[] expected = new byte[disk.Info.SizeBytes];
            baseContents.CopyTo(expected, 0);
            Assert.True(expected.AsSpan().SequenceEqual(contents), $"{where}: a reattached transient overlay does not read as the base");
        }
        Assert.False(File.Exists(overlayPath), $"{where}: the transient overlay file outlived its disk");
    }
}
