using XenDisk.Cow.Qcow2;
using XenDisk.Fuzz.Devices;
using XenDisk.Storage;

namespace XenDisk.Fuzz.Targets;

/// <summary>
/// A qcow2 image file, whole: the header and its extensions, the L1, L2 and refcount tables, the
/// snapshot table and the bitmaps directory are all read at open (qcow2.txt). An image is either
/// refused with a <see cref="StorageException"/> or opened; an opened image then serves a few reads,
/// writes, a discard and a flush, is closed, checked, repaired and reopened. Findings: any other
/// exception, a write outside the file or to the backing file, growth beyond what the writes need,
/// and, on an image the checker found consistent, a write acknowledged (then flushed and closed) that
/// does not read back the same.
/// </summary>
public sealed class Qcow2OpenTarget : FuzzTarget
{
    /// <summary>The backing file offered to images that name one: small, patterned, read-only.</summary>
    private const int BackingSize = 1 << 20;

    /// <summary>
    /// How far the file may grow: the writes below allocate at most a few clusters, L2 tables and
    /// refcount blocks each (2 MiB clusters at most), and a refcount table may be rebuilt or grown.
    /// </summary>
    private const long GrowthAllowance = 64L << 20;

    private const int WriteSize = 8192;

    public override string Name => "qcow2";

    public override string Description => "a qcow2 image: open, then read, write, discard, flush, close, check, reopen";

    public override FuzzOutcome Run(ReadOnlySpan<byte> input)
    {
        FuzzImageDevice image = new("image", input, input.Length, input.Length + GrowthAllowance, readOnly: false);
        FuzzImageDevice backing = NewBacking();
        Qcow2OpenOptions options = new() { OwnsDevices = false, AllowMissingBacking = true };
        List<(long Offset, byte[] Data)> acknowledged = [];
        Qcow2Image opened;
        try
        {
            opened = Qcow2Image.Open(image, backing, options);
        }
        catch (StorageException)
        {
            FuzzImageDevice.ThrowIfViolated(image, backing);
            return FuzzOutcome.Refused;
        }

        bool closedCleanly;
        using (opened)
        {
            long size = opened.Info.SizeBytes;
            byte[] buffer = new byte[WriteSize];
            opened.ReadAt(0, buffer.AsSpan(0, (int)Math.Min(buffer.Length, size)));
            if (size >= WriteSize)
            {
                // The far end of the disk reaches the last L1 entry.
                opened.ReadAt(AlignDown(size - WriteSize), buffer);
            }
            if (!opened.ReadOnly && size >= WriteSize)
            {
                long[] offsets = [0, AlignDown(size / 2), AlignDown(size - WriteSize)];
                for (int i = 0; i < offsets.Length; i++)
                {
                    byte[] data = Pattern(WriteSize, (byte)(0x40 + i));
                    // A failed write leaves its range undefined (blkif promises nothing for it), so what
                    // was acknowledged there before is no longer expected either way.
                    acknowledged.RemoveAll(w => Overlaps(w.Offset, offsets[i]));
                    if (opened.WriteAt(offsets[i], data) == IoStatus.Ok)
                    {
                        acknowledged.Add((offsets[i], data));
                    }
                }
                if (size >= 4 * WriteSize)
                {
                    long discarded = AlignDown(size / 4);
                    acknowledged.RemoveAll(w => Overlaps(w.Offset, discarded));
                    opened.Discard(discarded, WriteSize, false);
                }
                foreach ((long offset, byte[] data) in acknowledged)
                {
                    if (opened.ReadAt(offset, buffer) == IoStatus.Ok && !buffer.AsSpan().SequenceEqual(data))
                    {
                        ThrowIfConsistent(input, $"the write at {offset} acknowledged by the open image reads back differently");
                    }
                }
            }
            bool flushed = opened.Flush() == IoStatus.Ok;
            closedCleanly = opened.Close() == IoStatus.Ok && flushed;
        }
        FuzzImageDevice.ThrowIfViolated(image, backing);

        // The checker reads the same hostile metadata on its own, then repair rewrites it.
        Qcow2Checker.Check(image);
        Qcow2Checker.Check(image, repair: true);
        FuzzImageDevice.ThrowIfViolated(image, backing);

        if (acknowledged.Count == 0 || !closedCleanly)
        {
            return FuzzOutcome.Accepted;
        }
        // What was acknowledged, flushed and closed cleanly is on the disk: another open reads it back.
        FuzzImageDevice reopenedImage = new("image", image.ToArray(), 0, image.Info.SizeBytes + GrowthAllowance, readOnly: false);
        using Qcow2Image reopened = Qcow2Image.Open(reopenedImage, backing, options with { ReadOnly = true });
        byte[] readBack = new byte[WriteSize];
        foreach ((long offset, byte[] data) in acknowledged)
        {
            if (reopened.ReadAt(offset, readBack) != IoStatus.Ok || !readBack.AsSpan().SequenceEqual(data))
            {
                ThrowIfConsistent(input, $"the write at {offset}, acknowledged, flushed and closed cleanly, does not read back after reopening");
            }
        }
        FuzzImageDevice.ThrowIfViolated(reopenedImage, backing);
        return FuzzOutcome.Accepted;
    }

    /// <summary>
    /// Lost data is a finding when the image was consistent before it was opened. An image whose
    /// refcounts already disagree with its tables (a data cluster in use with refcount 0, say) can have
    /// that cluster allocated again, as in QEMU, which checks allocations only against metadata; the
    /// checker reports such an image as corrupt, and that is what the operator gets.
    /// </summary>
    private static void ThrowIfConsistent(ReadOnlySpan<byte> input, string problem)
    {
        FuzzImageDevice original = new("image", input, input.Length, input.Length, readOnly: true);
        Qcow2CheckReport report = Qcow2Checker.Check(original);
        FuzzFindingException.Check(report.Corruptions > 0, $"{problem}, and the image was consistent before it was opened");
    }

    private static FuzzImageDevice NewBacking()
    {
        byte[] contents = new byte[BackingSize];
        for (int i = 0; i < contents.Length; i += 512)
        {
            contents[i] = (byte)(i >> 9);
        }
        return new FuzzImageDevice("backing file", contents, BackingSize, BackingSize, readOnly: true);
    }

    private static byte[] Pattern(int length, byte seed)
    {
        byte[] data = new byte[length];
        for (int i = 0; i < data.Length; i++)
        {
            data[i] = (byte)(seed + (i >> 9));
        }
        return data;
    }

    private static long AlignDown(long offset) => offset & ~(long)(WriteSize - 1);

    private static bool Overlaps(long a, long b) => a < b + WriteSize && b < a + WriteSize;
}
