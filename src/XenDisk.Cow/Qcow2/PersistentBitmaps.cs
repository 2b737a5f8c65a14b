using System.Buffers.Binary;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>
/// The clusters QEMU's persistent dirty bitmaps occupy (=== Bitmaps extension ===, == Bitmaps ==):
/// the bitmap directory, each bitmap's table and the data clusters its table points to. Their clusters
/// are in use and counted, so they are protected from writes, from the allocator, and from repair.
/// (Keeping the bitmaps' contents up to date is <see cref="Qcow2Image"/>'s, in Qcow2Image.Bitmaps.cs.)
/// </summary>
internal static class PersistentBitmaps
{
    /// <summary>A directory entry's fixed part: table offset, table size, flags, type, granularity, name size, extra data size.</summary>
    private const int EntryFixedLength = 24;

    /// <summary>QEMU's BME_MAX_TABLE_SIZE: bitmap table entries per bitmap.</summary>
    private const uint MaximumTableEntries = 0x800_0000;

    /// <summary>
    /// Calls <paramref name="visit"/> with (offset, length, kind) for the directory, every table and
    /// every data cluster. Problems (areas outside the file, unreadable tables) are added to
    /// <paramref name="problems"/> and the area is skipped.
    /// </summary>
    public static void Walk(IBlockDevice device, Qcow2Header header, Action<long, long, MetadataKind> visit, List<string> problems)
    {
        if (header.Bitmaps is not { } extension)
        {
            return;
        }
        int clusterBits = header.ClusterBits;
        long clusterMask = header.ClusterSize - 1;
        long fileSize = device.Info.SizeBytes;
        visit(extension.DirectoryOffset, extension.DirectorySize, MetadataKind.BitmapDirectory);
        byte[] directory = new byte[extension.DirectorySize];
        if (DeviceIo.ReadBytes(device, extension.DirectoryOffset, directory) != IoStatus.Ok)
        {
            problems.Add($"cannot read the bitmap directory at 0x{extension.DirectoryOffset:x}");
            return;
        }
        int position = 0;
        for (int i = 0; i < extension.Count; i++)
        {
            if (directory.Length - position < EntryFixedLength)
            {
                problems.Add($"bitmap directory entry {i} runs past the end of the directory");
                return;
            }
            ReadOnlySpan<byte> entry = directory.AsSpan(position);
            long tableOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(entry);
            uint tableEntries = BinaryPrimitives.ReadUInt32BigEndian(entry[8..]);
            int nameSize = BinaryPrimitives.ReadUInt16BigEndian(entry[18..]);
            uint extraSize = BinaryPrimitives.ReadUInt32BigEndian(entry[20..]);
            long entryLength = (EntryFixedLength + (long)extraSize + nameSize + 7) & ~7L;
            if (entryLength > directory.Length - position)
            {
                problems.Add($"bitmap directory entry {i} runs past the end of the directory");
                return;
            }
            position += (int)entryLength;
            if (tableEntries == 0)
            {
                continue;
            }
            long tableBytes = (long)tableEntries * 8;
            if (tableEntries > MaximumTableEntries || tableOffset == 0 || (tableOffset & clusterMask) != 0
                || tableOffset >= fileSize || tableBytes > fileSize - tableOffset)
            {
                problems.Add($"bitmap {i}: its table (0x{tableOffset:x}, {tableEntries} entries) is not an aligned area within the file");
                continue;
            }
            visit(tableOffset, tableBytes, MetadataKind.BitmapTable);
            WalkTable(device, tableOffset, tableBytes, clusterBits, fileSize, i, visit, problems);
        }
    }

    /// <summary>The table's data clusters, read one cluster of entries at a time (a table may be large).</summary>
    private static void WalkTable(IBlockDevice device, long tableOffset, long tableBytes, int clusterBits, long fileSize, int bitmap,
        Action<long, long, MetadataKind> visit, List<string> problems)
    {
        int clusterSize = 1 << clusterBits;
        byte[] chunk = new byte[clusterSize];
        for (long done = 0; done < tableBytes; done += clusterSize)
        {
            int length = (int)Math.Min(clusterSize, tableBytes - done);
            Span<byte> part = chunk.AsSpan(0, length);
            if (DeviceIo.ReadBytes(device, tableOffset + done, part) != IoStatus.Ok)
            {
                problems.Add($"bitmap {bitmap}: cannot read its table at 0x{tableOffset + done:x}");
                return;
            }
            for (int j = 0; j + 8 <= length; j += 8)
            {
                long data = (long)(BinaryPrimitives.ReadUInt64BigEndian(part[j..]) & Qcow2Format.OffsetMask); // bits 9-55, as in L2 entries (== Bitmap table ==)
                if (data == 0)
                {
                    continue; // all zeros or all ones (bit 0): no cluster
                }
                if ((data & (clusterSize - 1)) != 0 || data >= fileSize)
                {
                    problems.Add($"bitmap {bitmap}: a table entry points to 0x{data:x}, not a cluster within the file");
                    continue;
                }
                visit(data, clusterSize, MetadataKind.BitmapData);
            }
        }
    }
}
