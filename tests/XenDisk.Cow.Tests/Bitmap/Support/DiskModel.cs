using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Bitmap.Support;

/// <summary>One guest operation of a random workload.</summary>
public enum OperationKind
{
    Write,
    Read,
    Discard,
    Flush,
}

/// <summary>
/// The expected contents of a virtual disk, driven by the same random operations as the overlay:
/// writes of random data, reads checked against it, discards (zeros), flushes.
/// </summary>
public sealed class DiskModel
{
    private readonly Random _random;
    private readonly int _sector;
    private readonly int _grain;

    /// <param name="initial">The disk before the workload: the base, zero-extended to the virtual size.</param>
    public DiskModel(byte[] initial, int sectorSize, int grainSize, int seed)
    {
        Contents = initial;
        _sector = sectorSize;
        _grain = grainSize;
        _random = new Random(seed);
    }

    public byte[] Contents { get; }

    public static byte[] Extend(byte[] baseContents, long virtualSize)
    {
        byte[] contents = new byte[virtualSize];
        baseContents.CopyTo(contents, 0);
        return contents;
    }

    /// <summary>A random range: offsets and lengths in sectors, lengths up to about three grains, clipped to the disk.</summary>
    public (long Offset, int Length) NextRange()
    {
        long sectors = Contents.LongLength / _sector;
        long start = _random.NextInt64(sectors);
        // Favour grain-aligned starts now and then, so whole-grain paths run too.
        if (_random.Next(3) == 0)
        {
            start = start * _sector / _grain * _grain / _sector;
        }
        int maxSectors = Math.Max(1, 3 * _grain / _sector + 2);
        long length = Math.Min(1 + _random.Next(maxSectors), sectors - start);
        return (start * _sector, (int)(length * _sector));
    }

    public OperationKind NextKind()
    {
        int roll = _random.Next(100);
        return roll switch
        {
            < 45 => OperationKind.Write,
            < 70 => OperationKind.Read,
            < 85 => OperationKind.Discard,
            _ => OperationKind.Flush,
        };
    }

    public byte[] NextData(int length)
    {
        byte[] data = new byte[length];
        _random.NextBytes(data);
        return data;
    }

    /// <summary>Runs <paramref name="count"/> random operations against <paramref name="device"/> and the model, checking every read and status.</summary>
    public void Run(IBlockDevice device, int count)
    {
        for (int i = 0; i < count; i++)
        {
            OperationKind kind = NextKind();
            if (kind == OperationKind.Flush)
            {
                Assert.Equal(IoStatus.Ok, device.Flush());
                continue;
            }
            (long offset, int length) = NextRange();
            switch (kind)
            {
                case OperationKind.Write:
                    byte[] data = NextData(length);
                    Assert.Equal(IoStatus.Ok, device.WriteAt(offset, data));
                    data.CopyTo(Contents, offset);
                    break;
                case OperationKind.Read:
                    byte[] read = new byte[length];
                    Assert.Equal(IoStatus.Ok, device.ReadAt(offset, read));
                    AssertSame(Contents.AsSpan((int)offset, length), read, offset);
                    break;
                case OperationKind.Discard:
                    Assert.Equal(IoStatus.Ok, device.Discard(offset, length, secure: false));
                    Array.Clear(Contents, (int)offset, length);
                    break;
            }
        }
    }

    /// <summary>Reads the whole device and compares it with the model.</summary>
    public void Verify(IBlockDevice device)
    {
        byte[] all = new byte[Contents.Length];
        Assert.Equal(IoStatus.Ok, device.ReadAt(0, all));
        AssertSame(Contents, all, 0);
    }

    public static void AssertSame(ReadOnlySpan<byte> expected, ReadOnlySpan<byte> actual, long offset)
    {
        if (expected.SequenceEqual(actual))
        {
            return;
        }
        int at = expected.CommonPrefixLength(actual);
        Assert.Fail($"Data differs at virtual byte {offset + at} (expected 0x{expected[at]:x2}, read 0x{actual[at]:x2}).");
    }
}
