using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Tests.Bitmap.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Bitmap;

/// <summary>Parallel callers: writes into one unmapped grain copy it up once; reads racing a copy-up see old or new data per sector.</summary>
public sealed class BitmapConcurrencyTests
{
    private const int Grain = 64 * 1024;
    private const int Sector = 512;

    [Fact]
    public void Parallel_writes_into_one_unmapped_grain_copy_it_up_once_and_keep_every_write()
    {
        const int grains = 32;
        const long size = (long)grains * Grain;
        const int writers = 8;
        using BitmapDisks disks = BitmapDisks.Create(BitmapDeviceKind.Memory, size, BitmapOverlay.RequiredCowSize(size, Grain), seed: 11);
        var countingBase = new CountingBlockDevice(disks.Base);
        using BitmapOverlay overlay = BitmapOverlay.Create(disks.Cow, countingBase, new BitmapCreateOptions { GrainSize = Grain }, new BitmapOverlayOptions { OwnsDevices = false });
        byte[] expected = (byte[])disks.BaseContents.Clone();

        for (int grain = 0; grain < grains; grain++)
        {
            long readsBefore = countingBase.Reads;
            // Each writer owns one 2 KiB slice of the grain, away from both ends, so every write is partial.
            byte[][] data = new byte[writers][];
            for (int w = 0; w < writers; w++)
            {
                data[w] = new byte[2048];
                new Random(grain * 100 + w).NextBytes(data[w]);
            }
            using var start = new Barrier(writers);
            var threads = new Thread[writers];
            var statuses = new IoStatus[writers];
            for (int w = 0; w < writers; w++)
            {
                int writer = w;
                long offset = (long)grain * Grain + 4096 + writer * 4096;
                threads[w] = new Thread(() =>
                {
                    start.SignalAndWait();
                    statuses[writer] = overlay.WriteAt(offset, data[writer]);
                });
                threads[w].Start();
            }
            foreach (Thread thread in threads)
            {
                thread.Join();
            }
            Assert.All(statuses, status => Assert.Equal(IoStatus.Ok, status));
            for (int w = 0; w < writers; w++)
            {
                data[w].CopyTo(expected, (long)grain * Grain + 4096 + w * 4096);
            }
            // One copy-up: the first writer reads the rest of the grain (before and after its slice: two
            // base reads); the others find the grain mapped and read nothing.
            Assert.True(countingBase.Reads - readsBefore == 2, $"grain {grain}: {countingBase.Reads - readsBefore} base reads");
            Assert.Equal(GrainState.Mapped, overlay.GetGrainState((long)grain * Grain));
        }
        byte[] all = new byte[size];
        Assert.Equal(IoStatus.Ok, overlay.ReadAt(0, all));
        DiskModel.AssertSame(expected, all, 0);
    }

    [Fact]
    public void Reads_racing_copy_ups_see_old_or_new_data_per_sector()
    {
        const int grains = 64;
        const long size = (long)grains * Grain;
        using BitmapDisks disks = BitmapDisks.Create(BitmapDeviceKind.Memory, size, BitmapOverlay.RequiredCowSize(size, Grain), seed: 12);
        using BitmapOverlay overlay = BitmapOverlay.Create(disks.Cow, disks.Base, new BitmapCreateOptions { GrainSize = Grain }, new BitmapOverlayOptions { OwnsDevices = false });
        byte[] written = new byte[Sector];
        new Random(99).NextBytes(written);
        int current = -1;
        int failures = 0;
        string? firstFailure = null;
        using var stop = new CancellationTokenSource();
        var readers = new Thread[2];
        for (int r = 0; r < readers.Length; r++)
        {
            readers[r] = new Thread(() =>
            {
                byte[] buffer = new byte[Grain];
                while (!stop.IsCancellationRequested)
                {
                    int grain = Math.Max(0, Volatile.Read(ref current));
                    long grainOffset = (long)grain * Grain;
                    if (overlay.ReadAt(grainOffset, buffer) != IoStatus.Ok)
                    {
                        Interlocked.Increment(ref failures);
                        continue;
                    }
                    for (int s = 0; s < Grain / Sector; s++)
                    {
                        ReadOnlySpan<byte> got = buffer.AsSpan(s * Sector, Sector);
                        ReadOnlySpan<byte> old = disks.BaseContents.AsSpan((int)grainOffset + s * Sector, Sector);
                        // Sector 3 of each grain is the one written; every other sector must always be the base's.
                        bool acceptable = got.SequenceEqual(old) || (s == 3 && got.SequenceEqual(written));
                        if (!acceptable && Interlocked.Increment(ref failures) == 1)
                        {
                            firstFailure = $"grain {grain} sector {s}";
                        }
                    }
                }
            });
            readers[r].Start();
        }
        for (int grain = 0; grain < grains; grain++)
        {
            Volatile.Write(ref current, grain);
            Thread.Yield();
            Assert.Equal(IoStatus.Ok, overlay.WriteAt((long)grain * Grain + 3 * Sector, written));
        }
        stop.Cancel();
        foreach (Thread reader in readers)
        {
            reader.Join();
        }
        Assert.True(failures == 0, $"{failures} torn or wrong reads, first at {firstFailure}");
    }

    [Fact]
    public void Random_parallel_workers_on_disjoint_ranges_all_read_back_their_data()
    {
        const long size = 4L * 1024 * 1024;
        const int workers = 4;
        using BitmapDisks disks = BitmapDisks.Create(BitmapDeviceKind.Memory, size, BitmapOverlay.RequiredCowSize(size, 4096), seed: 13);
        using BitmapOverlay overlay = BitmapOverlay.Create(disks.Cow, disks.Base, options: new BitmapOverlayOptions { OwnsDevices = false });
        // Worker w owns [w * slice + 1024, (w + 1) * slice + 512): neighbours share the grain at each
        // boundary (copy-ups of one grain from two sides at once), never a sector.
        long slice = size / workers;
        var models = new DiskModel[workers];
        var threads = new Thread[workers];
        Exception? failure = null;
        for (int w = 0; w < workers; w++)
        {
            int worker = w;
            long start = worker * slice + 1024;
            long length = worker == workers - 1 ? slice - 1024 : slice - 512;
            byte[] part = disks.BaseContents.AsSpan((int)start, (int)length).ToArray();
            models[w] = new DiskModel(part, 512, 4096, seed: w);
            var window = new OffsetDevice(overlay, start, length);
            threads[w] = new Thread(() =>
            {
                try
                {
                    models[worker].Run(window, 400);
                    models[worker].Verify(window);
                }
                catch (Exception e)
                {
                    Interlocked.CompareExchange(ref failure, e, null);
                }
            });
            threads[w].Start();
        }
        foreach (Thread thread in threads)
        {
            thread.Join();
        }
        Assert.Null(failure);
    }

    /// <summary>A window of another device: lets parallel workers share grains at the window edges.</summary>
    private sealed class OffsetDevice(IBlockDevice inner, long start, long length) : IBlockDevice
    {
        public BlockDeviceInfo Info { get; } = inner.Info with { SizeBytes = length };

        public bool CompletesInline => inner.CompletesInline;

        public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers) => inner.Read(start + offset, buffers);

        public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers) => inner.Write(start + offset, buffers);

        public IoStatus Flush() => inner.Flush();

        public IoStatus Discard(long offset, long count, bool secure) => inner.Discard(start + offset, count, secure);

        public BlockDeviceInfo Refresh() => Info;

        public void Dispose()
        {
        }
    }
}
