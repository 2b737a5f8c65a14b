using XenDisk.Cow.Policies;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2;

/// <summary>
/// Crash safety: a workload runs over a recording overlay; then, for crash points at every flush and
/// at random points in between, the image a disk could hold at that moment is rebuilt (flushed
/// writes kept, later writes kept or lost at random), opened and checked. At most leaks are allowed,
/// and everything acknowledged before the last completed guest flush (for Sync: every acknowledged
/// write) must read back intact unless a later request touched it.
/// </summary>
public class CrashSafetyTests
{
    private const int DiskSize = 1 << 20;

    public static TheoryData<MetadataPolicy, int, bool> Cases()
    {
        TheoryData<MetadataPolicy, int, bool> cases = [];
        foreach (MetadataPolicy policy in new[] { MetadataPolicy.Flush, MetadataPolicy.Sync, MetadataPolicy.Lazy })
        {
            cases.Add(policy, 65536, true);
            cases.Add(policy, 16384, false);
            cases.Add(policy, 4096, false);
        }
        return cases;
    }

    private sealed record Durable(int LogPosition, byte[] Model, bool[] Touched);

    [Theory]
    [MemberData(nameof(Cases))]
    public void CrashAtAnyPointLeavesAtMostLeaksAndKeepsFlushedWrites(MetadataPolicy policy, int clusterSize, bool extendedL2)
    {
        byte[] baseData = TestData.Random(DiskSize, 30);
        using MemoryBlockDevice backing = TestData.Base(baseData);
        int checkedPoints = 0;
        for (int workload = 0; workload < 4; workload++)
        {
            int seed = workload * 7919 + clusterSize + (int)policy * 31;
            Random random = new(seed);
            GrowableMemoryDevice inner = TestData.NewOverlay(DiskSize, clusterSize, extendedL2, true);
            byte[] initial = inner.ToArray();
            RecordingOverlay overlay = new(inner);
            byte[] model = (byte[])baseData.Clone();
            List<Durable> durable = [];
            List<(int Start, int End, long Offset, int Length)> requests = [];
            Qcow2Image image = TestData.Open(overlay, backing, policy, l2CacheBytes: 2L * clusterSize);
            int openedAt = overlay.Position;
            durable.Add(new Durable(openedAt, (byte[])model.Clone(), new bool[DiskSize]));
            for (int op = 0; op < 40; op++)
            {
                long offset = random.Next(DiskSize / 512) * 512L;
                int length = (int)Math.Min((random.Next(64) + 1) * 512L, DiskSize - offset);
                int kind = random.Next(10);
                int start = overlay.Position;
                if (kind < 6)
                {
                    byte[] data = TestData.Random(length, random.Next());
                    Assert.Equal(IoStatus.Ok, image.WriteAt(offset, data));
                    data.CopyTo(model, offset);
                }
                else if (kind < 8)
                {
                    Assert.Equal(IoStatus.Ok, image.Discard(offset, length, false));
                    Array.Clear(model, (int)offset, length);
                }
                else
                {
                    Assert.Equal(IoStatus.Ok, image.Flush());
                    durable.Add(new Durable(overlay.Position, (byte[])model.Clone(), new bool[DiskSize]));
                    continue;
                }
                requests.Add((start, overlay.Position, offset, length));
                if (policy == MetadataPolicy.Sync)
                {
                    durable.Add(new Durable(overlay.Position, (byte[])model.Clone(), new bool[DiskSize]));
                }
            }
            image.Dispose(); // a clean close is the last crash point
            durable.Add(new Durable(overlay.Position, (byte[])model.Clone(), new bool[DiskSize]));

            // Crash points: every flush in the log and random points between them.
            // Bounded: up to ten flush points (sampled evenly) and six random points per workload.
            SortedSet<int> points = [overlay.Position];
            List<int> flushes = [];
            for (int i = openedAt; i < overlay.Log.Count; i++)
            {
                if (overlay.Log[i] is RecordingOverlay.FlushOperation)
                {
                    flushes.Add(i + 1);
                }
            }
            for (int i = 0; i < Math.Min(10, flushes.Count); i++)
            {
                points.Add(flushes[i * flushes.Count / Math.Min(10, flushes.Count)]);
            }
            for (int i = 0; i < 6; i++)
            {
                points.Add(random.Next(openedAt, overlay.Position + 1));
            }
            foreach (int point in points)
            {
                CheckCrash(overlay, initial, point, durable, requests, backing, policy, new Random(seed + point), runQemu: checkedPoints % 25 == 0);
                checkedPoints++;
            }
        }
        Assert.True(checkedPoints >= 40, $"only {checkedPoints} crash points checked");
    }

    private static void CheckCrash(RecordingOverlay overlay, byte[] initial, int point, List<Durable> durable,
        List<(int Start, int End, long Offset, int Length)> requests, MemoryBlockDevice backing, MetadataPolicy policy, Random random, bool runQemu)
    {
        byte[] crashed = overlay.Replay(initial, point, random);
        GrowableMemoryDevice device = new(crashed);
        if (policy != MetadataPolicy.Lazy)
        {
            // Lazy refcounts may be stale by design (the dirty bit says so); every other policy must be consistent as is.
            Qcow2CheckReport report = Qcow2Checker.Check(device);
            Assert.True(report.Corruptions == 0, $"crash at {point}: {string.Join("\n", report.Messages)}");
            if (runQemu)
            {
                using TempDirectory directory = new();
                File.WriteAllBytes(directory.File("crashed.qcow2"), crashed);
                File.WriteAllBytes(directory.File("base.raw"), backing.Contents.ToArray());
                (int exitCode, string output) = QemuTools.Run(QemuTools.QemuImg, "check", "-f", "qcow2", directory.File("crashed.qcow2"));
                // Exit code 3 means leaks only; 2 would be corruption.
                Assert.True(exitCode is 0 or 3, $"qemu-img check after a crash at {point} exited with {exitCode}:\n{output}");
            }
        }
        // The newest state known durable at the crash point, and what requests after it may have changed.
        Durable last = durable.Last(d => d.LogPosition <= point);
        bool[] touched = new bool[DiskSize];
        foreach (var request in requests)
        {
            if (request.End > last.LogPosition && request.Start < point)
            {
                touched.AsSpan((int)request.Offset, request.Length).Fill(true);
            }
        }
        using (Qcow2Image image = TestData.Open(device, backing, policy))
        {
            byte[] contents = TestData.ReadAll(image);
            for (int i = 0; i < DiskSize; i++)
            {
                if (!touched[i] && contents[i] != last.Model[i])
                {
                    Assert.Fail($"crash at log position {point}: byte {i} is 0x{contents[i]:x2}, expected 0x{last.Model[i]:x2} (durable since {last.LogPosition})");
                }
            }
            Assert.Equal(IoStatus.Ok, image.Close());
        }
        Qcow2CheckReport after = Qcow2Checker.Check(device);
        Assert.True(after.Corruptions == 0, $"after reopening a crash at {point}: {string.Join("\n", after.Messages)}");
        if (policy == MetadataPolicy.Lazy)
        {
            Assert.True(after.IsClean, $"lazy refcounts were not rebuilt after a crash at {point}: {string.Join("\n", after.Messages)}");
        }
    }
}
