using System.Runtime.InteropServices;
using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Tests.Bitmap.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Bitmap;

/// <summary>
/// Crash safety: every write and flush reaching the CoW device is recorded; crash images are rebuilt
/// from prefixes of that log (at every internal flush and at random points between), where the writes
/// after the last completed device flush each survive sector by sector, or not, at random (a volatile
/// cache loses or keeps any of them). Each image must pass the checker, open, and read back, sector by
/// sector, a value the guest may see: what it held at the last completed guest flush (Sync: the last
/// acknowledged write) or anything written since. Under Lazy, a sector of a discarded grain may also
/// show its earlier contents.
/// </summary>
public sealed class BitmapCrashSafetyTests
{
    private const int Sector = 512;
    private const int WorkloadsPerPolicy = 80;
    private const int PointsPerSegment = 3;

    [Theory]
    [InlineData(MetadataPolicy.Flush)]
    [InlineData(MetadataPolicy.Sync)]
    [InlineData(MetadataPolicy.Lazy)]
    public void Everything_acknowledged_before_the_last_completed_flush_survives_any_crash(MetadataPolicy policy)
    {
        for (int seed = 0; seed < WorkloadsPerPolicy; seed++)
        {
            RunWorkload(policy, seed * 7919 + (int)policy);
        }
    }

    private sealed record Segment(int Start, int End, HashSet<ulong>[] Acceptable);

    private static void RunWorkload(MetadataPolicy policy, int seed)
    {
        var random = new Random(seed);
        int grain = new[] { 512, 4096, 16384 }[seed % 3];
        long baseSize = 128 * 1024;
        long virtualSize = seed % 4 == 0 ? baseSize + 16 * 1024 : baseSize;
        using var baseDevice = new MemoryBlockDevice(baseSize);
        random.NextBytes(baseDevice.Contents);
        byte[] baseContents = baseDevice.Contents.ToArray();
        long cowSize = BitmapOverlay.RequiredCowSize(virtualSize, grain);
        var recording = new RecordingBlockDevice(new MemoryBlockDevice(cowSize));
        var options = new BitmapOverlayOptions { Policy = policy, OwnsDevices = false };
        BitmapOverlay overlay = BitmapOverlay.Create(recording, baseDevice, new BitmapCreateOptions { GrainSize = grain, VirtualSize = virtualSize }, options);

        int sectors = (int)(virtualSize / Sector);
        byte[] initial = DiskModel.Extend(baseContents, virtualSize);
        ulong[] current = new ulong[sectors];
        var durable = new HashSet<ulong>[sectors];
        var pending = new HashSet<ulong>[sectors];
        bool[] lazilyDiscarded = new bool[sectors];
        for (int s = 0; s < sectors; s++)
        {
            current[s] = Hash(initial.AsSpan(s * Sector, Sector));
            durable[s] = [current[s]];
            pending[s] = [];
        }
        ulong zeroHash = Hash(new byte[Sector]);
        List<Segment> segments = [];
        int segmentStart = recording.Count;

        void CloseSegment()
        {
            int end = recording.Count;
            var acceptable = new HashSet<ulong>[sectors];
            for (int s = 0; s < sectors; s++)
            {
                acceptable[s] = [.. durable[s], .. pending[s]];
                durable[s] = lazilyDiscarded[s] ? [.. acceptable[s], current[s]] : [current[s]];
                pending[s].Clear();
            }
            segments.Add(new Segment(segmentStart, end, acceptable));
            segmentStart = end;
        }

        int operations = 25 + random.Next(25);
        var model = new DiskModel(initial, Sector, grain, seed);
        for (int i = 0; i < operations; i++)
        {
            int roll = random.Next(100);
            if (roll < 20)
            {
                Assert.Equal(IoStatus.Ok, overlay.Flush());
                CloseSegment();
                continue;
            }
            (long offset, int length) = model.NextRange();
            int first = (int)(offset / Sector);
            if (roll < 75)
            {
                byte[] data = model.NextData(length);
                Assert.Equal(IoStatus.Ok, overlay.WriteAt(offset, data));
                for (int s = 0; s < length / Sector; s++)
                {
                    ulong value = Hash(data.AsSpan(s * Sector, Sector));
                    current[first + s] = value;
                    pending[first + s].Add(value);
                    lazilyDiscarded[first + s] = false;
                }
            }
            else
            {
                Assert.Equal(IoStatus.Ok, overlay.Discard(offset, length, secure: false));
                for (int s = first; s < first + length / Sector; s++)
                {
                    current[s] = zeroHash;
                    pending[s].Add(zeroHash);
                    long grainStart = (long)s * Sector / grain * grain;
                    long grainEnd = Math.Min(grainStart + grain, virtualSize);
                    bool wholeGrain = grainStart >= offset && grainEnd <= offset + length;
                    lazilyDiscarded[s] |= policy == MetadataPolicy.Lazy && wholeGrain;
                }
            }
            if (policy == MetadataPolicy.Sync)
            {
                // Sync acknowledges a write only once it is durable: each write ends a segment.
                CloseSegment();
            }
        }
        RecordedIo[] log = recording.Snapshot();
        // The end of the log: no flush completed after the last operations.
        var tail = new HashSet<ulong>[sectors];
        for (int s = 0; s < sectors; s++)
        {
            tail[s] = [.. durable[s], .. pending[s]];
        }
        segments.Add(new Segment(segmentStart, log.Length + 1, tail));
        overlay.Dispose();
        Assert.Equal(baseContents, baseDevice.Contents.ToArray());

        CheckCrashPoints(log, segments, baseDevice, cowSize, virtualSize, random, $"policy {policy}, seed {seed}, grain {grain}");
    }

    private static void CheckCrashPoints(RecordedIo[] log, List<Segment> segments, IBlockDevice baseDevice, long cowSize, long virtualSize, Random random, string workload)
    {
        byte[] durableImage = new byte[cowSize];
        int applied = 0;
        // One device and one read buffer per workload: crash images are rebuilt in place.
        using var crashDevice = new MemoryBlockDevice(cowSize);
        byte[] contents = new byte[virtualSize];
        foreach (Segment segment in segments)
        {
            // Candidates: the segment's ends, just after each device flush inside it (the steps of a
            // map write-back), and a random point; a few are checked, to keep the run short.
            List<int> candidates = [segment.Start, segment.End - 1, segment.Start + random.Next(segment.End - segment.Start)];
            for (int p = segment.Start + 1; p < segment.End; p++)
            {
                if (log[p - 1].IsFlush)
                {
                    candidates.Add(p);
                }
            }
            SortedSet<int> points = [.. candidates.OrderBy(_ => random.Next()).Take(PointsPerSegment)];
            foreach (int prefix in points)
            {
                int lastFlush = Array.FindLastIndex(log, Math.Max(0, prefix - 1), Math.Max(0, prefix), io => io.IsFlush);
                for (; applied <= lastFlush; applied++)
                {
                    Apply(durableImage, log[applied], null);
                }
                Span<byte> image = crashDevice.Contents;
                durableImage.CopyTo(image);
                // Which of the unflushed writes survive: all, none, or any sectors of them.
                int mode = random.Next(3);
                for (int i = Math.Max(lastFlush + 1, applied); i < prefix; i++)
                {
                    Apply(image, log[i], mode == 0 ? null : mode == 1 ? static _ => false : _ => random.Next(2) == 0);
                }
                CheckImage(crashDevice, contents, baseDevice, segment.Acceptable, $"{workload}, crash after {prefix} of {log.Length} device operations (mode {mode})");
            }
        }
    }

    private static void Apply(Span<byte> image, RecordedIo io, Func<int, bool>? keepSector)
    {
        if (io.IsFlush)
        {
            return;
        }
        for (int s = 0; s < io.Data.Length / Sector; s++)
        {
            if (keepSector is null || keepSector(s))
            {
                io.Data.AsSpan(s * Sector, Sector).CopyTo(image[((int)io.Offset + s * Sector)..]);
            }
        }
    }

    private static void CheckImage(MemoryBlockDevice cow, byte[] contents, IBlockDevice baseDevice, HashSet<ulong>[] acceptable, string where)
    {
        BitmapCheckReport report = BitmapChecker.Check(cow);
        Assert.True(report.IsClean, $"{where}: checker found {string.Join("; ", report.Problems)}");
        using BitmapOverlay overlay = BitmapOverlay.Open(cow, baseDevice, new BitmapOverlayOptions { ReadOnly = true, OwnsDevices = false });
        Assert.Equal(IoStatus.Ok, overlay.ReadAt(0, contents));
        for (int s = 0; s < acceptable.Length; s++)
        {
            if (!acceptable[s].Contains(Hash(contents.AsSpan(s * Sector, Sector))))
            {
                Assert.Fail($"{where}: sector {s} reads a value the guest never wrote there since the last completed flush.");
            }
        }
    }

    private static ulong Hash(ReadOnlySpan<byte> sector)
    {
        ulong hash = 14695981039346656037;
        foreach (ulong value in MemoryMarshal.Cast<byte, ulong>(sector))
        {
            hash = (hash ^ value) * 1099511628211;
            hash ^= hash >> 29;
        }
        return hash;
    }
}
