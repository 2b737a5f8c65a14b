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
    /// <summary>
    /// The data plane's group commit (IGroupCommitDevice): writes that leave their mapping to a later
    /// Publish write only their data, and one Publish then writes the changed sectors of the table
    /// once for all of them. A successor opening the file in between (the service killed before
    /// answering) sees none of them mapped; after the Publish it sees all of them.
    /// </summary>
    [Fact]
    public void Unpublished_writes_are_mapped_in_the_file_only_by_the_one_publication_that_follows()
    {
        byte[] baseData = TestData.Random(1 << 20, 41);
        using MemoryBlockDevice backing = TestData.Base(baseData);
        GrowableMemoryDevice file = TestData.NewOverlay(1 << 20, ClusterSize, extendedL2: true, withBacking: true);
        using Qcow2Image image = TestData.Open(file, backing, MetadataPolicy.Flush);

        // A first allocating write, published as usual: the table and the dirty bit are in the file.
        Assert.Equal(IoStatus.Ok, image.WriteAt(0, TestData.Random(4096, 42)));
        long before = file.WrittenBytes;
        byte[][] data = [TestData.Random(4096, 43), TestData.Random(4096, 44), TestData.Random(4096, 45)];
        for (int i = 0; i < data.Length; i++)
        {
            Assert.Equal(IoStatus.Ok, WriteUnpublished(image, (i + 1) * ClusterSize, data[i], out bool publish));
            Assert.True(publish);
        }

        // Only the three data writes reached the file.
        Assert.Equal(3 * 4096, file.WrittenBytes - before);
        using (Qcow2Image successor = TestData.Open(new GrowableMemoryDevice(file.ToArray()), backing))
        {
            Assert.Equal(baseData.AsSpan(ClusterSize, 3 * ClusterSize).ToArray(), TestData.ReadAll(successor).AsSpan(ClusterSize, 3 * ClusterSize).ToArray());
        }

        // One publication: the one 512-byte sector of the table that holds the three entries.
        before = file.WrittenBytes;
        int writes = file.WriteCount;
        Assert.Equal(IoStatus.Ok, image.Publish());
        Assert.Equal(512, file.WrittenBytes - before);
        Assert.Equal(1, file.WriteCount - writes);
        using (Qcow2Image successor = TestData.Open(new GrowableMemoryDevice(file.ToArray()), backing))
        {
            byte[] all = TestData.ReadAll(successor);
            for (int i = 0; i < data.Length; i++)
            {
                Assert.Equal(data[i], all.AsSpan((i + 1) * ClusterSize, 4096).ToArray());
            }
        }

        // Nothing left to publish: a second call writes nothing.
        before = file.WrittenBytes;
        Assert.Equal(IoStatus.Ok, image.Publish());
        Assert.Equal(before, file.WrittenBytes);
    }

    private static unsafe IoStatus WriteUnpublished(Qcow2Image image, long offset, byte[] data, out bool publish)
    {
        fixed (byte* pointer = data)
        {
            IoBuffer buffer = new((nint)pointer, data.Length);
            return image.WriteUnpublished(offset, new ReadOnlySpan<IoBuffer>(in buffer), out publish);
        }
    }
}
