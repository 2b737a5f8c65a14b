using System.Buffers.Binary;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>How often each host cluster is referenced by the image's metadata, and what was wrong on the way.</summary>
internal sealed class ReferenceCounts
{
    public required ushort[] Counts { get; init; }
    public List<string> Corruptions { get; } = [];
    /// <summary>Every active L1 entry with an L2 table: (L1 index, L2 offset, COPIED bit).</summary>
    public List<(int Index, long Offset, bool Copied)> L1Entries { get; } = [];
    /// <summary>Every active standard L2 entry with a host cluster: (table offset, index, host offset, COPIED bit).</summary>
    public List<(long Table, int Index, long Host, bool Copied)> DataEntries { get; } = [];
    public long ClusterCount => Counts.Length;
}

/// <summary>
/// Walks the metadata from the header (== Header ==), the active L1 table and its L2 tables
/// (== Cluster mapping ==), the snapshots (== Snapshots ==), the persistent bitmaps (== Bitmaps ==)
/// and optionally the refcount structure,
/// counting references per host cluster. Reads straight from the device; used to rebuild refcounts
/// and by the checker. References outside the file are reported, not counted.
/// </summary>
internal static class ReferenceScanner
{
    public static ReferenceCounts Scan(IBlockDevice device, Qcow2Header header, bool includeRefcountStructure, Action<long, long>? progress = null)
    {
        int clusterBits = header.ClusterBits;
        int clusterSize = header.ClusterSize;
        long fileSize = device.Info.SizeBytes;
        long clusters = (fileSize + clusterSize - 1) >> clusterBits;
        if (clusters > int.MaxValue)
        {
            throw new StorageException("qcow2: the image has too many clusters to check in memory");
        }
        ReferenceCounts result = new() { Counts = new ushort[clusters] };
        ushort[] counts = result.Counts;

        void Reference(long offset, long length, string what)
        {
            if (length <= 0)
            {
                return;
            }
            long first = offset >> clusterBits;
            long last = (offset + length - 1) >> clusterBits;
            for (long c = first; c <= last; c++)
            {
                if (c < 0 || c >= clusters)
                {
                    result.Corruptions.Add($"{what} at 0x{offset:x} lies beyond the end of the file");
                    return;
                }
                if (counts[c] < ushort.MaxValue)
                {
                    counts[c]++;
                }
            }
        }

        Reference(0, clusterSize, "header");
        Reference(header.L1TableOffset, (long)header.L1Size * 8, "L1 table");
        using AlignedBlock l2 = new(clusterSize);
        long totalTables = header.L1Size;
        long doneTables = 0;

        void WalkL1(long l1Offset, int l1Size, bool active, string label)
        {
            if (l1Size == 0)
            {
                return;
            }
            byte[] l1 = new byte[l1Size * 8];
            if (DeviceIo.ReadBytes(device, l1Offset, l1) != IoStatus.Ok)
            {
                result.Corruptions.Add($"{label}: cannot read the L1 table");
                return;
            }
            for (int i = 0; i < l1Size; i++)
            {
                ulong entry = BinaryPrimitives.ReadUInt64BigEndian(l1.AsSpan(i * 8));
                if (active)
                {
                    progress?.Invoke(++doneTables, totalTables);
                }
                if (entry == 0)
                {
                    continue;
                }
                if ((entry & Qcow2Format.L1ReservedMask) != 0)
                {
                    result.Corruptions.Add($"{label}: L1 entry {i} has reserved bits set (0x{entry:x16})");
                }
                long offset = (long)(entry & Qcow2Format.OffsetMask);
                if (offset == 0)
                {
                    continue;
                }
                if ((offset & (clusterSize - 1)) != 0 || offset >= fileSize)
                {
                    result.Corruptions.Add($"{label}: L1 entry {i} points to 0x{offset:x}, not a cluster within the file");
                    continue;
                }
                Reference(offset, clusterSize, "L2 table");
                if (active)
                {
                    result.L1Entries.Add((i, offset, (entry & Qcow2Format.OflagCopied) != 0));
                }
                if (DeviceIo.ReadClamped(device, offset, l2) != IoStatus.Ok)
                {
                    result.Corruptions.Add($"{label}: cannot read the L2 table at 0x{offset:x}");
                    continue;
                }
                WalkL2(l2.Span, offset, active, label);
            }
        }

        void WalkL2(ReadOnlySpan<byte> table, long tableOffset, bool active, string label)
        {
            int entrySize = header.L2EntrySize;
            for (int j = 0; j < header.L2Entries; j++)
            {
                ulong word = BinaryPrimitives.ReadUInt64BigEndian(table[(j * entrySize)..]);
                ulong bitmap = header.ExtendedL2 ? BinaryPrimitives.ReadUInt64BigEndian(table[(j * entrySize + 8)..]) : 0;
                if (word == 0 && bitmap == 0)
                {
                    continue;
                }
                if ((word & Qcow2Format.OflagCompressed) != 0)
                {
                    // Compressed Clusters Descriptor: offset in bits 0..x-1, extra sectors in x..61.
                    int x = 62 - (clusterBits - 8);
                    long host = (long)(word & ((1UL << x) - 1));
                    long sectors = (long)((word >> x) & ((1UL << (62 - x)) - 1)) + 1;
                    long start = host & ~511L;
                    Reference(start, sectors * 512, "compressed cluster");
                    continue;
                }
                if ((word & Qcow2Format.L2ReservedMask) != 0)
                {
                    result.Corruptions.Add($"{label}: L2 entry {j} of the table at 0x{tableOffset:x} has reserved bits set (0x{word:x16})");
                }
                if (header.ExtendedL2)
                {
                    uint allocated = (uint)bitmap;
                    uint zero = (uint)(bitmap >> 32);
                    if ((allocated & zero) != 0 || ((word & Qcow2Format.OffsetMask) == 0 && allocated != 0) || (word & Qcow2Format.OflagZero) != 0)
                    {
                        result.Corruptions.Add($"{label}: extended L2 entry {j} of the table at 0x{tableOffset:x} is invalid (0x{word:x16}, bitmap 0x{bitmap:x16})");
                    }
                }
                long hostOffset = (long)(word & Qcow2Format.OffsetMask);
                if (hostOffset == 0)
                {
                    continue;
                }
                if ((hostOffset & (clusterSize - 1)) != 0 || hostOffset >= fileSize)
                {
                    result.Corruptions.Add($"{label}: L2 entry {j} of the table at 0x{tableOffset:x} points to 0x{hostOffset:x}, not a cluster within the file");
                    continue;
                }
                Reference(hostOffset, clusterSize, "data cluster");
                if (active)
                {
                    result.DataEntries.Add((tableOffset, j, hostOffset, (word & Qcow2Format.OflagCopied) != 0));
                }
            }
        }

        WalkL1(header.L1TableOffset, header.L1Size, active: true, "active L1");
        if (header.SnapshotCount > 0)
        {
            Reference(header.SnapshotsOffset, header.SnapshotTableLength, "snapshot table");
            foreach (Qcow2Snapshot snapshot in header.Snapshots)
            {
                Reference(snapshot.L1TableOffset, (long)snapshot.L1Size * 8, "snapshot L1 table");
                WalkL1(snapshot.L1TableOffset, snapshot.L1Size, active: false, $"snapshot '{snapshot.Id}'");
            }
        }
        // Persistent bitmaps' directory, tables and data are in use whatever the autoclear bit says:
        // counted here, they are never reported as leaks nor freed by a rebuild or repair.
        PersistentBitmaps.Walk(device, header, (offset, length, kind) => Reference(offset, length, MetadataClusters.Describe(kind)), result.Corruptions);
        if (includeRefcountStructure)
        {
            long tableBytes = (long)header.RefcountTableClusters << clusterBits;
            Reference(header.RefcountTableOffset, tableBytes, "refcount table");
            byte[] table = new byte[tableBytes];
            if (DeviceIo.ReadBytes(device, header.RefcountTableOffset, table) == IoStatus.Ok)
            {
                for (int i = 0; i < table.Length / 8; i++)
                {
                    ulong entry = BinaryPrimitives.ReadUInt64BigEndian(table.AsSpan(i * 8));
                    long offset = (long)(entry & ~Qcow2Format.RefcountTableReservedMask);
                    if ((entry & Qcow2Format.RefcountTableReservedMask) != 0)
                    {
                        result.Corruptions.Add($"refcount table entry {i} has reserved bits set");
                    }
                    if (offset == 0)
                    {
                        continue;
                    }
                    if ((offset & (clusterSize - 1)) != 0 || offset >= fileSize)
                    {
                        result.Corruptions.Add($"refcount table entry {i} points to 0x{offset:x}, not a cluster within the file");
                        continue;
                    }
                    Reference(offset, clusterSize, "refcount block");
                }
            }
        }
        return result;
    }
}

/// <summary>Writes a complete refcount structure (table and blocks) for given counts: used by create, rebuild and repair.</summary>
internal static class RefcountStructure
{
    /// <summary>
    /// Places new refcount blocks and table after the last cluster of <paramref name="counts"/>,
    /// sized so that they also count themselves, writes them and flushes. The caller then points
    /// the header at the table.
    /// </summary>
    public static IoStatus WriteFresh(IBlockDevice device, ushort[] counts, int clusterBits, int refcountOrder, out long tableOffset, out int tableClusters, out long endCluster)
    {
        int clusterSize = 1 << clusterBits;
        int blockBits = clusterBits + 3 - refcountOrder;
        long perBlock = 1L << blockBits;
        long start = counts.Length;
        long blocks = 1, table = 1;
        while (true)
        {
            long total = start + blocks + table;
            long neededBlocks = (total + perBlock - 1) / perBlock;
            long neededTable = Math.Max(1, (neededBlocks * 8 + clusterSize - 1) / clusterSize);
            if (neededBlocks == blocks && neededTable == table)
            {
                break;
            }
            blocks = neededBlocks;
            table = neededTable;
        }
        tableOffset = (start + blocks) << clusterBits;
        tableClusters = (int)table;
        endCluster = start + blocks + table;
        if (device is IGrowableBlockDevice growable)
        {
            IoStatus grown = growable.EnsureSize(endCluster << clusterBits);
            if (grown != IoStatus.Ok)
            {
                return grown;
            }
        }
        ulong maximum = RefcountCodec.Maximum(refcountOrder);
        using AlignedBlock block = new(clusterSize);
        for (long b = 0; b < blocks; b++)
        {
            block.Span.Clear();
            for (long i = 0; i < perBlock; i++)
            {
                long cluster = b * perBlock + i;
                ulong value = cluster < counts.Length ? counts[cluster] : (cluster >= start && cluster < endCluster ? 1UL : 0UL);
                if (value != 0)
                {
                    RefcountCodec.Set(block.Span, refcountOrder, (int)i, Math.Min(value, maximum));
                }
            }
            IoStatus status = DeviceIo.Write(device, (start + b) << clusterBits, block, 0, clusterSize);
            if (status != IoStatus.Ok)
            {
                return status;
            }
        }
        using AlignedBlock tableBlock = new((int)(table << clusterBits));
        for (long b = 0; b < blocks; b++)
        {
            BinaryPrimitives.WriteUInt64BigEndian(tableBlock.Span[(int)(b * 8)..], (ulong)((start + b) << clusterBits));
        }
        IoStatus written = DeviceIo.Write(device, tableOffset, tableBlock, 0, tableBlock.Length);
        return written == IoStatus.Ok ? device.Flush() : written;
    }
}
