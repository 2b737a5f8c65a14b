using XenDisk.Cow.Policies;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2;

public class ConcurrencyTests
{
    [Theory]
    [InlineData(65536, true)]
    [InlineData(65536, false)]
    [InlineData(4096, false)]
    public void Parallel_writes_into_one_unallocated_cluster_allocate_it_once(int clusterSize, bool extendedL2)
    {
        byte[] baseData = TestData.Random(4 << 20, 20);
        using MemoryBlockDevice backing = TestData.Base(baseData);
        for (int round = 0; round < 20; round++)
        {
            GrowableMemoryDevice overlay = TestData.NewOverlay(4 << 20, clusterSize, extendedL2, true);
            byte[] model = (byte[])baseData.Clone();
            long cluster = (long)(round + 3) * clusterSize;
            int pieces = 8;
            int piece = clusterSize / pieces;
            using (Qcow2Image image = TestData.Open(overlay, backing))
            {
                using Barrier start = new(pieces);
                Parallel.For(0, pieces, new ParallelOptions { MaxDegreeOfParallelism = pieces }, i =>
                {
                    byte[] data = TestData.Random(piece, round * 100 + i);
                    start.SignalAndWait();
                    Assert.Equal(IoStatus.Ok, image.WriteAt(cluster + i * piece, data));
                });
                for (int i = 0; i < pieces; i++)
                {
                    TestData.Random(piece, round * 100 + i).CopyTo(model, cluster + i * piece);
                }
                RandomWorkloadTests.AssertSame(model, 0, TestData.ReadAll(image));
            }
            Qcow2CheckReport report = Qcow2Checker.Check(overlay);
            Assert.True(report.IsClean, string.Join("\n", report.Messages));
            // Header, refcount table, refcount block, L1, one L2 table and exactly one data cluster.
            Assert.Equal(6L * clusterSize, report.ImageEndOffset);
        }
    }

    [Fact]
    public async Task Reads_racing_copy_up_see_old_or_new_data_per_sector()
    {
        byte[] baseData = new byte[4 << 20];
        baseData.AsSpan().Fill(0x11);
        using MemoryBlockDevice backing = TestData.Base(baseData);
        GrowableMemoryDevice overlay = TestData.NewOverlay(4 << 20, 65536, true, true);
        using Qcow2Image image = TestData.Open(overlay, backing);
        using CancellationTokenSource stop = new();
        int bad = 0;
        Task reader = Task.Run(() =>
        {
            byte[] buffer = new byte[65536];
            while (!stop.IsCancellationRequested)
            {
                for (long cluster = 0; cluster < 64; cluster++)
                {
                    Assert.Equal(IoStatus.Ok, image.ReadAt(cluster * 65536, buffer));
                    for (int sector = 0; sector < buffer.Length; sector += 512)
                    {
                        byte first = buffer[sector];
                        if ((first != 0x11 && first != 0x22) || buffer.AsSpan(sector, 512).IndexOfAnyExcept(first) >= 0)
                        {
                            Interlocked.Increment(ref bad);
                        }
                    }
                }
            }
        });
        byte[] data = new byte[4096];
        data.AsSpan().Fill(0x22);
        Random random = new(21);
        for (int i = 0; i < 400; i++)
        {
            Assert.Equal(IoStatus.Ok, image.WriteAt(random.Next(64 * 65536 / 512 - 8) * 512L, data));
        }
        stop.Cancel();
        await reader;
        Assert.Equal(0, bad);
    }

    [Theory]
    [InlineData(MetadataPolicy.Flush)]
    [InlineData(MetadataPolicy.Sync)]
    [InlineData(MetadataPolicy.Lazy)]
    public void Parallel_random_workload_on_disjoint_ranges_matches_model(MetadataPolicy policy)
    {
        byte[] baseData = TestData.Random(8 << 20, 22);
        using MemoryBlockDevice backing = TestData.Base(baseData);
        GrowableMemoryDevice overlay = TestData.NewOverlay(8 << 20, 65536, true, true);
        byte[] model = (byte[])baseData.Clone();
        const int Threads = 4;
        int slice = (8 << 20) / Threads;
        using (Qcow2Image image = TestData.Open(overlay, backing, policy, l2CacheBytes: 65536))
        {
            Parallel.For(0, Threads, new ParallelOptions { MaxDegreeOfParallelism = Threads }, t =>
            {
                Random random = new(t);
                for (int i = 0; i < 100; i++)
                {
                    // Ranges interleave at 4 KiB granularity across threads so that they share clusters and L2 tables.
                    int block = random.Next(slice / 4096);
                    long offset = ((long)block * Threads + t) * 4096;
                    byte[] data = TestData.Random(4096, t * 1000 + i);
                    if (random.Next(6) == 0)
                    {
                        Assert.Equal(IoStatus.Ok, image.Discard(offset, 4096, false));
                        lock (model)
                        {
                            Array.Clear(model, (int)offset, 4096);
                        }
                    }
                    else
                    {
                        Assert.Equal(IoStatus.Ok, image.WriteAt(offset, data));
                        lock (model)
                        {
                            data.CopyTo(model, offset);
                        }
                    }
                    if (random.Next(10) == 0)
                    {
                        Assert.Equal(IoStatus.Ok, image.Flush());
                    }
                }
            });
            RandomWorkloadTests.AssertSame(model, 0, TestData.ReadAll(image));
        }
        Qcow2CheckReport report = Qcow2Checker.Check(overlay);
        Assert.True(report.IsClean, string.Join("\n", report.Messages));
        using Qcow2Image reopened = TestData.Open(overlay, backing);
        RandomWorkloadTests.AssertSame(model, 0, TestData.ReadAll(reopened));
    }
}
