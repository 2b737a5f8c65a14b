using System.Buffers.Binary;

namespace XenDisk.Cli.Tests.Support;

/// <summary>
/// Damages qcow2 files on purpose, by the spec's numbers (docs/interop/qcow2.txt): the header's
/// l1_table_offset at byte 40 and incompatible_features at 72 (bit 4: extended L2), L1 and L2
/// entries big-endian, host offsets in bits 9-55.
/// </summary>
public static class Qcow2Surgery
{
    private const ulong OffsetMask = 0x00ff_ffff_ffff_fe00UL;

    /// <summary>The file offset of the L2 entry that maps guest cluster 0 (its L2 table must exist).</summary>
    public static long FirstL2EntryOffset(string path, out int entrySize)
    {
        using FileStream file = new(path, FileMode.Open, FileAccess.Read);
        Span<byte> header = stackalloc byte[104];
        file.ReadExactly(header);
        ulong l1Offset = BinaryPrimitives.ReadUInt64BigEndian(header[40..]);
        bool extendedL2 = (BinaryPrimitives.ReadUInt64BigEndian(header[72..]) & (1UL << 4)) != 0;
        entrySize = extendedL2 ? 16 : 8;
        Span<byte> l1Entry = stackalloc byte[8];
        file.Position = (long)l1Offset;
        file.ReadExactly(l1Entry);
        ulong l2Offset = BinaryPrimitives.ReadUInt64BigEndian(l1Entry) & OffsetMask;
        Assert.True(l2Offset != 0, "guest cluster 0 has no L2 table: write to it first");
        return (long)l2Offset;
    }

    /// <summary>Clears the L2 entry of guest cluster 0: its data cluster keeps its refcount with no reference left, a leak.</summary>
    public static void LeakFirstCluster(string path)
    {
        long entry = FirstL2EntryOffset(path, out int entrySize);
        using FileStream file = new(path, FileMode.Open, FileAccess.Write);
        file.Position = entry;
        file.Write(new byte[entrySize]);
    }

    /// <summary>Points the L2 entry of guest cluster 0 far beyond the end of the file: a corruption.</summary>
    public static void PointFirstClusterBeyondEnd(string path)
    {
        long entry = FirstL2EntryOffset(path, out _);
        byte[] value = new byte[8];
        // COPIED (bit 63) set, host offset 1 TiB: well past the end of a test image.
        BinaryPrimitives.WriteUInt64BigEndian(value, (1UL << 63) | (1UL << 40));
        using FileStream file = new(path, FileMode.Open, FileAccess.Write);
        file.Position = entry;
        file.Write(value);
    }
}
