using System.Buffers.Binary;
using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Bitmap;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Cow.Tests.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Faults;

public enum OverlayFormat
{
    Qcow2,
    Bitmap,
}

/// <summary>Which step of the overlay's work a fault hits.</summary>
public enum FaultedStep
{
    /// <summary>The data (and copy-up) writes of a guest write.</summary>
    DataWrite,
    /// <summary>Metadata write-back: refcount blocks, L2 tables and L1 entries of qcow2; map blocks of a bitmap overlay.</summary>
    MetadataWrite,
    /// <summary>A flush of the storage (the data flush before metadata, or the one that makes it durable).</summary>
    Flush,
}

/// <summary>
/// Storage errors (EIO, ENOSPC) under qcow2 and bitmap overlays, for the Sync, Flush and Lazy
/// policies, injected by <see cref="FaultyBlockDevice"/> into data writes, metadata writes and
/// flushes. One scenario per case: a flushed warm-up, a trigger request during which the fault is
/// armed, more random requests, healing, a last flush and close; then the storage is reopened twice,
/// as the running host shows it and as it would survive a power loss. Asserted:
/// <list type="bullet">
/// <item>the request that met the fault returns the injected status (no exception, no hang), and no
/// request before it fails;</item>
/// <item>later requests succeed or fail cleanly with an error status, and the open image always reads
/// what was acknowledged (or what a failed request may have left);</item>
/// <item>each reopened image opens, passes our checker (and qemu-img check for qcow2, leaks allowed),
/// reads every sector acknowledged before the last successful flush intact, and accepts new writes.</item>
/// </list>
/// The scenario runs once for every position of the fault among the trigger's operations of that kind
/// (the first, the second, ... data write; metadata write; flush), and once with the fault persisting
/// until healed.
/// </summary>
[Trait(Needs.Key, Needs.Qemu)]
public sealed class StorageFaultTests
{
    private const int DiskSize = 256 * 1024;
    private const int Unit = 4096;
    private const int MaximumPositions = 12;
    private static readonly TimeSpan ScenarioLimit = TimeSpan.FromMinutes(2);

    public static TheoryData<OverlayFormat, MetadataPolicy, FaultedStep, IoStatus> Cases()
    {
        TheoryData<OverlayFormat, MetadataPolicy, FaultedStep, IoStatus> cases = [];
        foreach (OverlayFormat format in Enum.GetValues<OverlayFormat>())
        {
            foreach (MetadataPolicy policy in new[] { MetadataPolicy.Sync, MetadataPolicy.Flush, MetadataPolicy.Lazy })
            {
                foreach (FaultedStep step in Enum.GetValues<FaultedStep>())
                {
                    cases.Add(format, policy, step, IoStatus.IoError);
                    cases.Add(format, policy, step, IoStatus.NoSpace);
                }
            }
        }
        return cases;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void A_storage_error_fails_its_request_and_loses_nothing_acknowledged(OverlayFormat format, MetadataPolicy policy, FaultedStep step, IoStatus status)
    {
        List<long> failedWrites = [];
        int positions = 0;
        for (int skip = 0; skip < MaximumPositions; skip++)
        {
            Scenario scenario = new(format, policy, step, status, skip, persistent: false, runQemu: skip == 0);
            RunWithin(scenario.Run);
            if (!scenario.FaultFired)
            {
                break;
            }
            positions++;
            failedWrites.AddRange(scenario.FailedWriteOffsets);
        }
        Assert.True(positions > 0, "the fault never fired: the scenario does not reach the step it means to test");

        Scenario persistent = new(format, policy, step, status, 0, persistent: true, runQemu: true);
        RunWithin(persistent.Run);
        Assert.True(persistent.FaultFired, "the persistent fault never fired");

        if (step == FaultedStep.MetadataWrite)
        {
            AssertMetadataCovered(format, policy, failedWrites);
        }
    }

    /// <summary>
    /// A full file system under a qcow2 overlay: the image file cannot grow, so a write that needs a
    /// new cluster fails with NoSpace while rewriting allocated clusters still works; once space is
    /// free again every request works, and nothing acknowledged is lost.
    /// </summary>
    [Theory]
    [InlineData(MetadataPolicy.Sync)]
    [InlineData(MetadataPolicy.Flush)]
    [InlineData(MetadataPolicy.Lazy)]
    public void A_full_file_system_fails_allocating_writes_until_space_returns(MetadataPolicy policy)
    {
        RunWithin(() =>
        {
            using Rig rig = Rig.Create(OverlayFormat.Qcow2, policy, seed: 7);
            rig.Warm();
            byte[] rewrite = rig.NewData(Unit);
            rig.Storage.Inject(new Fault(FaultTarget.Grow, IoStatus.NoSpace) { Count = int.MaxValue });
            byte[] data = rig.NewData(3 * Unit);
            Assert.Equal(IoStatus.NoSpace, rig.Write(200 * 1024 + 1024, data));
            rig.CheckLive("after the failed allocating write");
            // The warm-up allocated the first cluster: rewriting it needs no space.
            Assert.Equal(IoStatus.Ok, rig.Write(0, rewrite));
            Assert.Equal(IoStatus.Ok, rig.Flush());
            rig.Storage.Heal();
            Assert.Equal(IoStatus.Ok, rig.Write(200 * 1024 + 1024, data));
            Assert.Equal(IoStatus.Ok, rig.Flush());
            rig.CheckLive("after space returned");
            Assert.True(rig.Storage.FailuresInjected > 0);
            rig.CloseAndCheckReopened(runQemu: true, "a full file system");
        });
    }

    /// <summary>
    /// The file system fills up at every possible allocation in turn (a data cluster, an L2 table, a
    /// refcount block): 512-byte clusters with 64-bit refcounts need new metadata clusters every few
    /// allocations. Requests fail with NoSpace, never worse, and nothing stays broken: once space
    /// returns the writes that failed succeed when retried, and the reopened image holds everything
    /// acknowledged.
    /// </summary>
    [Theory]
    [InlineData(MetadataPolicy.Sync)]
    [InlineData(MetadataPolicy.Flush)]
    [InlineData(MetadataPolicy.Lazy)]
    public void The_file_system_filling_up_at_any_allocation_fails_cleanly_and_recovers(MetadataPolicy policy)
    {
        int positions = 0;
        // The first growths (data, then the first new L2 table and refcount block), then a sample of the later ones.
        foreach (int skip in new[] { 0, 1, 2, 3, 4, 11, 18, 25, 32, 39, 46, 53, 60, 67 })
        {
            bool fired = false;
            RunWithin(() =>
            {
                using Rig rig = Rig.Create(OverlayFormat.Qcow2, policy, seed: skip, clusterSize: 512, refcountOrder: 6);
                rig.Warm();
                rig.Storage.Inject(new Fault(FaultTarget.Grow, IoStatus.NoSpace) { Skip = skip, Count = int.MaxValue });
                List<(long Offset, byte[] Data)> failed = [];
                for (int i = 0; i < 8; i++)
                {
                    (long offset, byte[] data) = (136 * 1024 + i * 14 * 1024 + 1024, rig.NewData(5 * 1024));
                    IoStatus status = rig.Write(offset, data);
                    Assert.True(status is IoStatus.Ok or IoStatus.NoSpace, $"growth fault {skip}: write {i} returned {status}");
                    if (status != IoStatus.Ok)
                    {
                        failed.Add((offset, data));
                    }
                    if (i % 3 == 2)
                    {
                        IoStatus flushed = rig.Flush();
                        Assert.True(flushed is IoStatus.Ok or IoStatus.NoSpace, $"growth fault {skip}: flush returned {flushed}");
                    }
                    rig.CheckLive($"growth fault {skip}, write {i}");
                }
                fired = rig.Storage.FailuresInjected > 0;
                rig.Storage.Heal();
                foreach ((long offset, byte[] data) in failed)
                {
                    Assert.Equal(IoStatus.Ok, rig.Write(offset, data));
                }
                rig.CheckLive($"growth fault {skip}, after space returned");
                rig.CloseAndCheckReopened(runQemu: skip % 10 == 0, $"growth fault {skip}");
            });
            if (!fired)
            {
                break;
            }
            positions++;
        }
        Assert.True(positions >= 10, $"only {positions} growth points were reached");
    }

    /// <summary>
    /// Regression: a bitmap overlay whose flush failed used to try again on the next flush, which
    /// the storage then reported successful although the failed flush had lost the new grains' data;
    /// the map blocks written by that later flush marked those grains as the overlay's, and after a
    /// power loss they read zeros instead of the base. Now no later flush succeeds and the map of
    /// those grains never reaches the disk.
    /// </summary>
    [Fact]
    public void After_a_failed_flush_a_bitmap_overlay_reports_no_flush_successful_again()
    {
        RunWithin(() =>
        {
            using Rig rig = Rig.Create(OverlayFormat.Bitmap, MetadataPolicy.Flush, seed: 3);
            rig.Warm();
            Assert.Equal(IoStatus.Ok, rig.Write(160 * 1024, rig.NewData(2 * Unit)));
            rig.Storage.Inject(new Fault(FaultTarget.Flush, IoStatus.IoError));
            Assert.Equal(IoStatus.IoError, rig.Flush());
            rig.Storage.Heal();
            Assert.Equal(IoStatus.IoError, rig.Flush());
            rig.CheckLive("after the failed flush");
            rig.CloseAndCheckReopened(runQemu: false, "a failed bitmap flush");
        });
    }

    private static void RunWithin(Action scenario)
    {
        Task run = Task.Run(scenario);
        if (!((IAsyncResult)run).AsyncWaitHandle.WaitOne(ScenarioLimit))
        {
            Assert.Fail($"the scenario did not finish within {ScenarioLimit}: a request hangs after a storage error");
        }
        run.GetAwaiter().GetResult();
    }

    /// <summary>
    /// The metadata faults must have hit what they are about. A bitmap overlay's faults are confined
    /// to the map's byte range, so any hit is a map write. For qcow2: an L2 table and (except under
    /// Lazy, whose refcounts wait for close) a refcount block, located in the storage the same
    /// deterministic scenario leaves behind without a fault.
    /// </summary>
    private static void AssertMetadataCovered(OverlayFormat format, MetadataPolicy policy, List<long> failedWrites)
    {
        Assert.NotEmpty(failedWrites);
        if (format == OverlayFormat.Bitmap)
        {
            return;
        }
        Scenario healthy = new(format, policy, FaultedStep.MetadataWrite, IoStatus.Ok, 0, persistent: false, runQemu: false);
        RunWithin(healthy.Run);
        (HashSet<long> l2Tables, HashSet<long> refcountBlocks) = Qcow2Layout(healthy.FinalImage!);
        Assert.True(failedWrites.Any(l2Tables.Contains), $"no fault hit an L2 table (at {string.Join(", ", l2Tables)}); failed writes at {string.Join(", ", failedWrites)}");
        if (policy != MetadataPolicy.Lazy)
        {
            Assert.True(failedWrites.Any(refcountBlocks.Contains), $"no fault hit a refcount block (at {string.Join(", ", refcountBlocks)}); failed writes at {string.Join(", ", failedWrites)}");
        }
    }

    /// <summary>Bits 9-55 of L1 and L2 entries (qcow2.txt, == Cluster mapping ==).</summary>
    private const ulong OffsetMask = 0x00ff_ffff_ffff_fe00;

    /// <summary>The host offsets of the L2 tables (from the L1 table) and refcount blocks (from the refcount table) of a qcow2 image.</summary>
    private static (HashSet<long> L2Tables, HashSet<long> RefcountBlocks) Qcow2Layout(byte[] image)
    {
        Qcow2Header header = Qcow2Disk.ReadHeader(new GrowableMemoryDevice(image, readOnly: true));
        HashSet<long> l2 = [];
        for (int i = 0; i < header.L1Size; i++)
        {
            long entry = (long)(BinaryPrimitives.ReadUInt64BigEndian(image.AsSpan((int)header.L1TableOffset + i * 8)) & OffsetMask);
            if (entry != 0)
            {
                l2.Add(entry);
            }
        }
        HashSet<long> blocks = [];
        int entries = (header.RefcountTableClusters << header.ClusterBits) / 8;
        for (int i = 0; i < entries; i++)
        {
            long entry = (long)(BinaryPrimitives.ReadUInt64BigEndian(image.AsSpan((int)header.RefcountTableOffset + i * 8)) & ~0x1ffUL);
            if (entry != 0)
            {
                blocks.Add(entry);
            }
        }
        return (l2, blocks);
    }

    /// <summary>One run of the scenario with the fault at one position.</summary>
    private sealed class Scenario(OverlayFormat format, MetadataPolicy policy, FaultedStep step, IoStatus status, int skip, bool persistent, bool runQemu)
    {
        public bool FaultFired { get; private set; }

        public List<long> FailedWriteOffsets { get; } = [];

        /// <summary>The storage after a healthy run (<paramref name="status"/> Ok), for finding the metadata layout.</summary>
        public byte[]? FinalImage { get; private set; }

        private string Name => $"{format} {policy}, {step} fails with {status} ({(persistent ? "until healed" : $"operation {skip + 1} of its kind")})";

        public void Run()
        {
            using Rig rig = Rig.Create(format, policy, seed: 11);
            rig.Warm();

            // The trigger: for metadata and flush faults under Flush and Lazy, the guest flush that
            // writes back what fresh writes dirtied; otherwise (and always for data faults) a fresh
            // write, which copies up partial units and, under Sync, writes its metadata back at once.
            bool triggerIsFlush = step != FaultedStep.DataWrite && policy != MetadataPolicy.Sync;
            if (triggerIsFlush)
            {
                foreach (long offset in new long[] { 136 * 1024 + 512, 176 * 1024, 224 * 1024 + 3072 })
                {
                    Assert.Equal(IoStatus.Ok, rig.Write(offset, rig.NewData(2 * Unit)));
                }
            }
            if (status != IoStatus.Ok)
            {
                rig.Storage.Inject(FaultFor(rig));
            }
            IoStatus result = triggerIsFlush ? rig.Flush() : rig.Write(160 * 1024 + 1536, rig.NewData(6 * 1024));
            FaultFired = rig.Storage.FailuresInjected > 0;
            string where = $"{Name}: the trigger request";
            if (FaultFired)
            {
                Assert.True(result == status, $"{where} returned {result}, not the injected {status}");
            }
            else
            {
                Assert.True(result == IoStatus.Ok, $"{where} failed with {result} though no fault was injected");
            }
            rig.CheckLive(where);

            if (!persistent)
            {
                rig.Storage.Heal();
            }

            var random = new Random(skip * 31 + (int)step);
            for (int i = 0; i < 12; i++)
            {
                if (persistent && i == 3)
                {
                    rig.Storage.Heal();
                }
                where = $"{Name}: request {i} after the trigger";
                IoStatus outcome = rig.RandomRequest(random);
                Assert.True(outcome is IoStatus.Ok or IoStatus.IoError || outcome == status, $"{where} failed with {outcome}, not a storage error");
                rig.CheckLive(where);
            }
            rig.Storage.Heal();
            FailedWriteOffsets.AddRange(rig.Storage.Injected.Where(f => f.Target == FaultTarget.Write).Select(f => f.Offset));
            rig.CloseAndCheckReopened(runQemu, Name);
            FinalImage = rig.Storage.VolatileImage();
        }

        private Fault FaultFor(Rig rig)
        {
            int count = persistent ? int.MaxValue : 1;
            return step switch
            {
                FaultedStep.DataWrite => new Fault(FaultTarget.Write, status)
                {
                    Skip = skip, Count = count, Phase = persistent ? FaultPhase.Any : FaultPhase.BeforeFirstFlush,
                    RangeStart = rig.DataOffset,
                },
                FaultedStep.MetadataWrite => new Fault(FaultTarget.Write, status)
                {
                    Skip = skip, Count = count, Phase = persistent ? FaultPhase.Any : FaultPhase.AfterFirstFlush,
                    RangeStart = rig.MetadataStart, RangeEnd = rig.MetadataEnd,
                },
                _ => new Fault(FaultTarget.Flush, status) { Skip = skip, Count = count },
            };
        }
    }

    /// <summary>An overlay of one format on a <see cref="FaultyBlockDevice"/>, with the history of what the guest was told.</summary>
    private sealed class Rig : IDisposable
    {
        private readonly OverlayFormat _format;
        private readonly MetadataPolicy _policy;
        private readonly MemoryBlockDevice _base;
        private readonly Random _random;
        private readonly byte[] _contents = new byte[DiskSize];
        private IBlockDevice _overlay;
        private int _position;

        private Rig(OverlayFormat format, MetadataPolicy policy, FaultyBlockDevice storage, MemoryBlockDevice baseDevice, IBlockDevice overlay, Random random)
        {
            _format = format;
            _policy = policy;
            Storage = storage;
            _base = baseDevice;
            _overlay = overlay;
            _random = random;
            History = new SectorHistory(baseDevice.Contents);
            History.MarkDurable(0);
        }

        public FaultyBlockDevice Storage { get; }

        public SectorHistory History { get; }

        /// <summary>Where guest data lives in the storage: the data area of a bitmap overlay; all of a qcow2 file (data and metadata clusters interleave).</summary>
        public long DataOffset => _format == OverlayFormat.Bitmap ? BitmapHeader!.DataOffset : 0;

        public long MetadataStart => _format == OverlayFormat.Bitmap ? BitmapHeader!.BitmapOffset : 0;

        public long MetadataEnd => _format == OverlayFormat.Bitmap ? BitmapHeader!.DataOffset : long.MaxValue;

        private BitmapHeader? BitmapHeader { get; init; }

        /// <param name="clusterSize">qcow2 only: small clusters with wide refcounts need a new L2 table or refcount block every few allocations.</param>
        public static Rig Create(OverlayFormat format, MetadataPolicy policy, int seed, int clusterSize = Unit, int refcountOrder = 4)
        {
            var random = new Random(seed);
            var baseDevice = new MemoryBlockDevice(DiskSize);
            random.NextBytes(baseDevice.Contents);
            if (format == OverlayFormat.Qcow2)
            {
                GrowableMemoryDevice file = new();
                Qcow2Image.Create(file, new Qcow2CreateOptions
                {
                    VirtualSize = DiskSize,
                    ClusterSize = clusterSize,
                    RefcountOrder = refcountOrder,
                    BackingFile = "base.raw",
                    BackingFormat = "raw",
                    LazyRefcounts = policy == MetadataPolicy.Lazy,
                });
                var storage = new FaultyBlockDevice(file);
                return new Rig(format, policy, storage, baseDevice, OpenQcow2(storage, baseDevice, policy), random);
            }
            var cow = new FaultyBlockDevice(new MemoryBlockDevice(BitmapOverlay.RequiredCowSize(DiskSize, Unit)));
            BitmapOverlay overlay = BitmapOverlay.Create(cow, baseDevice, new BitmapCreateOptions { GrainSize = Unit }, new BitmapOverlayOptions { Policy = policy, OwnsDevices = false });
            return new Rig(format, policy, cow, baseDevice, overlay, random) { BitmapHeader = overlay.Header };
        }

        private static Qcow2Image OpenQcow2(IBlockDevice storage, IBlockDevice baseDevice, MetadataPolicy policy) =>
            Qcow2Image.Open(storage, baseDevice, new Qcow2OpenOptions { Policy = policy, OwnsDevices = false });

        public byte[] NewData(int length)
        {
            byte[] data = new byte[length];
            _random.NextBytes(data);
            return data;
        }

        /// <summary>Acknowledged writes and a discard in the first half of the disk, then a flush: the durable state faults must not lose.</summary>
        public void Warm()
        {
            for (int i = 0; i < 6; i++)
            {
                Assert.Equal(IoStatus.Ok, Write(i * 20 * 1024 + i * 512, NewData(Unit + i * 1024)));
            }
            Assert.Equal(IoStatus.Ok, Discard(48 * 1024, 3 * Unit));
            Assert.Equal(IoStatus.Ok, Flush());
        }

        public IoStatus Write(long offset, byte[] data)
        {
            IoStatus status = _overlay.WriteAt(offset, data);
            History.Write(offset, data, ++_position, status == IoStatus.Ok);
            AfterRequest(status);
            return status;
        }

        public IoStatus Discard(long offset, int length)
        {
            IoStatus status = _overlay.Discard(offset, length, secure: false);
            if (_format == OverlayFormat.Bitmap)
            {
                BitmapCrashSafetyTests.RecordDiscard(History, offset, length, ++_position, status == IoStatus.Ok, _policy, Unit, DiskSize);
            }
            else
            {
                History.Discard(offset, length, ++_position, status == IoStatus.Ok);
            }
            AfterRequest(status);
            return status;
        }

        public IoStatus Flush()
        {
            IoStatus status = _overlay.Flush();
            if (status == IoStatus.Ok)
            {
                History.MarkDurable(++_position);
            }
            return status;
        }

        /// <summary>Sync acknowledges a request only once it is durable.</summary>
        private void AfterRequest(IoStatus status)
        {
            if (status == IoStatus.Ok && _policy == MetadataPolicy.Sync)
            {
                History.MarkDurable(++_position);
            }
        }

        public IoStatus RandomRequest(Random random)
        {
            int roll = random.Next(10);
            long offset = random.Next(DiskSize / 512 - 16) * 512L;
            int length = (1 + random.Next(16)) * 512;
            return roll switch
            {
                < 6 => Write(offset, NewData(length)),
                < 8 => Discard(offset, length),
                _ => Flush(),
            };
        }

        public void CheckLive(string where)
        {
            Assert.Equal(IoStatus.Ok, _overlay.ReadAt(0, _contents));
            History.CheckLive(_contents, where);
        }

        /// <summary>
        /// Heals the storage, flushes (a success makes everything acknowledged durable), closes the
        /// overlay, and checks what the storage holds: as the host shows it, and as a power loss
        /// right now would leave it.
        /// </summary>
        public void CloseAndCheckReopened(bool runQemu, string name)
        {
            Storage.Heal();
            IoStatus flushed = Flush();
            Assert.True(flushed is IoStatus.Ok or IoStatus.IoError, $"{name}: the flush after healing returned {flushed}");
            if (_overlay is Qcow2Image image)
            {
                // Close says whether the metadata reached the disk: never after the image failed.
                string? failure = image.Failure;
                IoStatus closed = image.Close();
                Assert.True(failure is null ? closed == IoStatus.Ok : closed == IoStatus.IoError, $"{name}: closing returned {closed} (image failure: {failure ?? "none"})");
            }
            else
            {
                _overlay.Dispose();
            }
            CheckReopened(Storage.VolatileImage(), runQemu, $"{name}: reopening the storage as the host shows it");
            CheckReopened(Storage.DurableImage(), runQemu, $"{name}: reopening the storage after a power loss");
        }

        private void CheckReopened(byte[] storage, bool runQemu, string where)
        {
            if (_format == OverlayFormat.Qcow2)
            {
                CheckReopenedQcow2(storage, runQemu, where);
                return;
            }
            using var device = new MemoryBlockDevice(storage.Length);
            storage.CopyTo(device.Contents);
            BitmapCheckReport report = BitmapChecker.Check(device);
            Assert.True(report.IsClean, $"{where}: checker found {string.Join("; ", report.Problems)}");
            using (BitmapOverlay reopened = BitmapOverlay.Open(device, _base, new BitmapOverlayOptions { Policy = _policy, OwnsDevices = false }))
            {
                CheckContentsAndWrite(reopened, where);
            }
            BitmapCheckReport after = BitmapChecker.Check(device);
            Assert.True(after.IsClean, $"{where}, after writing to it: checker found {string.Join("; ", after.Problems)}");
        }

        private void CheckReopenedQcow2(byte[] storage, bool runQemu, string where)
        {
            var device = new GrowableMemoryDevice(storage);
            bool dirty = Qcow2Disk.ReadHeader(device).Dirty;
            if (!dirty)
            {
                // A dirty image (Lazy) may have stale refcounts by design; opening it rebuilds them.
                Qcow2CheckReport report = Qcow2Checker.Check(device);
                Assert.True(report.Corruptions == 0, $"{where}: {string.Join("\n", report.Messages)}");
                if (runQemu)
                {
                    QemuCheck(storage, where);
                }
            }
            using (Qcow2Image reopened = OpenQcow2(device, _base, _policy))
            {
                CheckContentsAndWrite(reopened, where);
                Assert.Equal(IoStatus.Ok, reopened.Close());
            }
            Qcow2CheckReport after = Qcow2Checker.Check(device);
            Assert.True(after.Corruptions == 0 && (!dirty || after.IsClean), $"{where}, after writing to it: {string.Join("\n", after.Messages)}");
            if (runQemu)
            {
                QemuCheck(device.ToArray(), where + ", after writing to it");
            }
        }

        /// <summary>Every sector reads what was durable (or written later); then a new write reads back.</summary>
        private void CheckContentsAndWrite(IBlockDevice reopened, string where)
        {
            Assert.Equal(IoStatus.Ok, reopened.ReadAt(0, _contents));
            History.CheckDurable(_contents, int.MaxValue, where);
            byte[] data = NewData(3 * Unit);
            Assert.Equal(IoStatus.Ok, reopened.WriteAt(100 * 1024 + 512, data));
            byte[] back = new byte[data.Length];
            Assert.Equal(IoStatus.Ok, reopened.ReadAt(100 * 1024 + 512, back));
            Assert.True(data.AsSpan().SequenceEqual(back), $"{where}: a write after reopening does not read back");
            Assert.Equal(IoStatus.Ok, reopened.Flush());
        }

        private void QemuCheck(byte[] image, string where)
        {
            using TempDirectory directory = new();
            File.WriteAllBytes(directory.File("base.raw"), _base.Contents.ToArray());
            string path = directory.File("faulted.qcow2");
            File.WriteAllBytes(path, image);
            (int exitCode, string output) = QemuTools.Run(QemuTools.QemuImg, "check", "-f", "qcow2", path);
            // Exit code 3 means leaks only; 2 would be corruption.
            Assert.True(exitCode is 0 or 3, $"{where}: qemu-img check exited with {exitCode}:\n{output}");
        }

        public void Dispose()
        {
            _overlay.Dispose();
            Storage.Dispose();
            _base.Dispose();
        }
    }
}
