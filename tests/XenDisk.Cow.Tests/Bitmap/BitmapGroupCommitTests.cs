using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Cow.Tests.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Bitmap;

/// <summary>
/// Concurrent sync writes and flushes share map write-back passes; sharing never acknowledges a
/// request whose own map change is not yet durable: a crash right after any acknowledgement, losing
/// every unflushed write, still finds it.
/// </summary>
public class BitmapGroupCommitTests
{
    private const int Grain = 4096;
    private const int Writers = 6;
    private const int WritesPerWriter = 16;

    private readonly record struct Acknowledged(int Position, long Offset, byte[] Data);

    [Theory]
    [InlineData(MetadataPolicy.Sync, false)]
    [InlineData(MetadataPolicy.Flush, true)]
    [InlineData(MetadataPolicy.Lazy, true)]
    public void Every_acknowledged_durable_write_survives_a_crash_right_after_it(MetadataPolicy policy, bool flushAfterEachWrite)
    {
        // Each write into grains of its own, so that every acknowledgement depends on a map change.
        long stride = 16L * Grain;
        long virtualSize = stride * Writers * WritesPerWriter;
        using var baseDevice = new MemoryBlockDevice(virtualSize);
        new Random(3).NextBytes(baseDevice.Contents);
        long cowSize = BitmapOverlay.RequiredCowSize(virtualSize, Grain);
        var recorder = new CrashRecorder(new MemoryBlockDevice(cowSize));
        List<Acknowledged> acknowledged = [];

        using (BitmapOverlay overlay = BitmapOverlay.Create(recorder, baseDevice, new BitmapCreateOptions { GrainSize = Grain, VirtualSize = virtualSize },
            new BitmapOverlayOptions { Policy = policy, OwnsDevices = false }))
        {
            using Barrier start = new(Writers);
            Parallel.For(0, Writers, new ParallelOptions { MaxDegreeOfParallelism = Writers }, writer =>
            {
                start.SignalAndWait();
                for (int i = 0; i < WritesPerWriter; i++)
                {
                    long offset = (i * Writers + writer) * stride + (i % 4) * Grain;
                    byte[] data = TestData.Random(Grain, writer * 1000 + i);
                    Assert.Equal(IoStatus.Ok, overlay.WriteAt(offset, data));
                    if (flushAfterEachWrite)
                    {
                        Assert.Equal(IoStatus.Ok, overlay.Flush());
                    }
                    int position = recorder.Position;
                    lock (acknowledged)
                    {
                        acknowledged.Add(new Acknowledged(position, offset, data));
                    }
                }
            });
        }

        acknowledged.Sort((a, b) => a.Position.CompareTo(b.Position));
        var replayer = new CrashReplayer(new byte[cowSize], recorder.Snapshot());
        using var crashed = new MemoryBlockDevice(cowSize);
        Random random = new(5);
        for (int k = 0; k < acknowledged.Count; k++)
        {
            replayer.ImageAt(acknowledged[k].Position, UnflushedWrites.LostAll, random).CopyTo(crashed.Contents);
            using BitmapOverlay reopened = BitmapOverlay.Open(crashed, baseDevice, new BitmapOverlayOptions { ReadOnly = true, OwnsDevices = false });
            for (int j = k; j >= 0; j -= Math.Max(1, k / 8))
            {
                byte[] back = new byte[Grain];
                Assert.Equal(IoStatus.Ok, reopened.ReadAt(acknowledged[j].Offset, back));
                Assert.True(back.AsSpan().SequenceEqual(acknowledged[j].Data),
                    $"write at {acknowledged[j].Offset}, acknowledged at log position {acknowledged[j].Position}, lost by a crash at position {acknowledged[k].Position}");
            }
        }
    }
}
