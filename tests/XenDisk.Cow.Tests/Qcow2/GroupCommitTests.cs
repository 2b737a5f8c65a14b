using XenDisk.Cow.Policies;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Cow.Tests.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2;

/// <summary>
/// Concurrent requests that must make metadata durable (sync writes, guest flushes) share write-back
/// passes. Sharing must never acknowledge a request whose own metadata is not yet on disk: a crash
/// right after any acknowledgement, losing every write not flushed, still finds that write.
/// </summary>
public class GroupCommitTests
{
    private const int ClusterSize = 65536;
    private const int Writers = 6;
    private const int WritesPerWriter = 16;

    private readonly record struct Acknowledged(int Position, long Offset, byte[] Data);

    [Theory]
    [InlineData(MetadataPolicy.Sync, false)]
    [InlineData(MetadataPolicy.Flush, true)]
    public void Every_acknowledged_durable_write_survives_a_crash_right_after_it(MetadataPolicy policy, bool flushAfterEachWrite)
    {
        long virtualSize = (long)Writers * WritesPerWriter * ClusterSize;
        byte[] baseData = TestData.Random((int)virtualSize, 31);
        using MemoryBlockDevice backing = TestData.Base(baseData);
        GrowableMemoryDevice file = TestData.NewOverlay(virtualSize, ClusterSize, extendedL2: true, withBacking: true);
        byte[] initial = file.ToArray();
        CrashRecorder recorder = new(file);
        List<Acknowledged> acknowledged = [];

        using (Qcow2Image image = TestData.Open(recorder, backing, policy))
        {
            using Barrier start = new(Writers);
            Parallel.For(0, Writers, new ParallelOptions { MaxDegreeOfParallelism = Writers }, writer =>
            {
                start.SignalAndWait();
                for (int i = 0; i < WritesPerWriter; i++)
                {
                    // Each write is a first write into its own cluster, so each allocates and changes metadata.
                    long offset = (long)(i * Writers + writer) * ClusterSize + (i % 16) * 4096;
                    byte[] data = TestData.Random(4096, writer * 1000 + i);
                    Assert.Equal(IoStatus.Ok, image.WriteAt(offset, data));
                    if (flushAfterEachWrite)
                    {
                        Assert.Equal(IoStatus.Ok, image.Flush());
                    }
                    int position = recorder.Position;
                    lock (acknowledged)
                    {
                        acknowledged.Add(new Acknowledged(position, offset, data));
                    }
                }
            });
            Assert.True(image.Statistics.MetadataFlushes > 0);
        }

        acknowledged.Sort((a, b) => a.Position.CompareTo(b.Position));
        var replayer = new CrashReplayer(initial, recorder.Snapshot());
        Random random = new(5);
        for (int k = 0; k < acknowledged.Count; k++)
        {
            byte[] crashed = replayer.ImageAt(acknowledged[k].Position, UnflushedWrites.LostAll, random);
            using GrowableMemoryDevice storage = new(crashed);
            using Qcow2Image reopened = TestData.Open(storage, backing, MetadataPolicy.Flush, readOnly: true);
            // This acknowledgement and every one before it (a sample of them, to keep the test quick).
            for (int j = k; j >= 0; j -= Math.Max(1, k / 8))
            {
                byte[] back = new byte[4096];
                Assert.Equal(IoStatus.Ok, reopened.ReadAt(acknowledged[j].Offset, back));
                Assert.True(back.AsSpan().SequenceEqual(acknowledged[j].Data),
                    $"write at {acknowledged[j].Offset}, acknowledged at log position {acknowledged[j].Position}, lost by a crash at position {acknowledged[k].Position}");
            }
        }
    }
}
