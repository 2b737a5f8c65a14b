using XenDisk.Cow.Policies;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2;

/// <summary>
/// Seeded random writes, reads, discards, flushes and reopens over a base with known content,
/// compared at every read against a plain byte array (the model), for every policy, cluster sizes
/// from 4 KiB to 2 MiB, with and without extended L2 entries and a backing device.
/// </summary>
public class RandomWorkloadTests
{
    public static TheoryData<int, bool, MetadataPolicy, bool> Cases()
    {
        TheoryData<int, bool, MetadataPolicy, bool> cases = [];
        foreach (MetadataPolicy policy in Enum.GetValues<MetadataPolicy>())
        {
            foreach (int clusterSize in new[] { 4096, 16384, 65536, 2 << 20 })
            {
                foreach (bool extended in new[] { false, true })
                {
                    if (extended && clusterSize < 16384)
                    {
                        continue;
                    }
                    cases.Add(clusterSize, extended, policy, true);
                }
            }
            cases.Add(65536, false, policy, false);
            cases.Add(65536, true, policy, false);
        }
        return cases;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Random_workload_matches_model(int clusterSize, bool extendedL2, MetadataPolicy policy, bool withBacking)
    {
        int seed = HashCode.Combine(clusterSize, extendedL2, policy, withBacking) & 0x7fffffff;
        Random random = new(seed);
        int virtualSize = (int)Math.Clamp(24L * clusterSize, 1 << 20, 16 << 20);
        byte[] baseData = TestData.Random(virtualSize - 3 * 4096, seed + 1); // a base shorter than the disk
        byte[] model = new byte[virtualSize];
        if (withBacking)
        {
            baseData.CopyTo(model, 0);
        }
        using MemoryBlockDevice backing = TestData.Base(baseData);
        GrowableMemoryDevice overlay = TestData.NewOverlay(virtualSize, clusterSize, extendedL2, withBacking);
        // A small L2 cache (when the disk has several tables) exercises eviction and write-back.
        long cache = 2L * clusterSize;
        Qcow2Image image = TestData.Open(overlay, withBacking ? backing : null, policy, l2CacheBytes: cache);
        int maxLength = Math.Min(3 * clusterSize, 256 * 1024);
        try
        {
            for (int op = 0; op < 120; op++)
            {
                int sectors = virtualSize / 512;
                long offset = (long)random.Next(sectors) * 512;
                int length = (int)Math.Min((random.Next(maxLength / 512) + 1) * 512L, virtualSize - offset);
                int kind = random.Next(100);
                if (kind < 45)
                {
                    byte[] data = TestData.Random(length, random.Next());
                    Assert.Equal(IoStatus.Ok, image.WriteAt(offset, data));
                    data.CopyTo(model, offset);
                }
                else if (kind < 75)
                {
                    byte[] read = new byte[length];
                    Assert.Equal(IoStatus.Ok, image.ReadAt(offset, read));
                    AssertSame(model, offset, read);
                }
                else if (kind < 87)
                {
                    Assert.Equal(IoStatus.Ok, image.Discard(offset, length, secure: false));
                    Array.Clear(model, (int)offset, length);
                }
                else if (kind < 96)
                {
                    Assert.Equal(IoStatus.Ok, image.Flush());
                }
                else if (policy != MetadataPolicy.Transient)
                {
                    Assert.Equal(IoStatus.Ok, image.Close());
                    image = TestData.Open(overlay, withBacking ? backing : null, policy, l2CacheBytes: cache);
                }
            }
            AssertSame(model, 0, TestData.ReadAll(image));
            if (policy == MetadataPolicy.Transient)
            {
                return;
            }
            Assert.Equal(IoStatus.Ok, image.Close());
            Qcow2CheckReport report = Qcow2Checker.Check(overlay);
            Assert.True(report.IsClean, string.Join("\n", report.Messages));
            image = TestData.Open(overlay, withBacking ? backing : null, policy);
            AssertSame(model, 0, TestData.ReadAll(image));
        }
        finally
        {
            image.Dispose();
        }
    }

    internal static void AssertSame(byte[] model, long offset, byte[] actual)
    {
        for (int i = 0; i < actual.Length; i++)
        {
            if (model[offset + i] != actual[i])
            {
                Assert.Fail($"byte at guest offset {offset + i} is 0x{actual[i]:x2}, expected 0x{model[offset + i]:x2}");
            }
        }
    }
}
