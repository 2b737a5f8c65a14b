using System.Buffers.Binary;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>The outcome of <see cref="Qcow2Checker.Check"/>, in the terms qemu-img check uses.</summary>
public sealed record Qcow2CheckReport
{
    /// <summary>Problems that can lose data: a refcount below the number of references, invalid or out-of-range entries, wrong COPIED bits.</summary>
    public int Corruptions { get; init; }

    /// <summary>Clusters whose refcount is higher than their references (wasted space, harmless).</summary>
    public int Leaks { get; init; }

    public int CorruptionsFixed { get; init; }

    public int LeaksFixed { get; init; }

    /// <summary>One line per problem found (capped), then what repair did.</summary>
    public IReadOnlyList<string> Messages { get; init; } = [];

    /// <summary>The end of the last cluster in use.</summary>
    public long ImageEndOffset { get; init; }

    public bool IsClean => Corruptions == 0 && Leaks == 0;
}

/// <summary>
/// XenDisk's qcow2 checker: walks the metadata, counts references to every host cluster and compares
/// them with the refcounts (== Host cluster management ==), checks the COPIED bits of L1 and L2
/// entries (== Cluster mapping ==) and that every entry points into the file. With repair it
/// rebuilds the refcount structure from the references (fixing leaks and refcount errors) and
/// corrects COPIED bits. The image must not be open elsewhere while it is checked.
/// </summary>
public static class Qcow2Checker
{
    private const int MaximumMessages = 200;

    /// <param name="image">The image file; must be writable for <paramref name="repair"/>.</param>
    /// <param name="progress">Called with (done, total) L1 entries while scanning.</param>
    public static Qcow2CheckReport Check(IBlockDevice image, bool repair = false, Action<long, long>? progress = null)
    {
        Qcow2Header header;
        try
        {
            header = Qcow2Disk.ReadHeader(image);
        }
        catch (StorageException e)
        {
            return new Qcow2CheckReport { Corruptions = 1, Messages = [e.Message] };
        }
        Findings before = Examine(image, header, progress);
        if (!repair || (before.Leaks == 0 && before.RepairableCorruptions == 0))
        {
            return before.ToReport(0, 0, []);
        }
        if (image.Info.ReadOnly)
        {
            return before.ToReport(0, 0, ["repair refused: the image is read-only"]);
        }
        List<string> actions = [];
        IoStatus status = Repair(image, header, actions);
        if (status != IoStatus.Ok)
        {
            actions.Add($"repair failed: {status.Describe()}");
            return before.ToReport(0, 0, actions);
        }
        Qcow2Header repaired = Qcow2Disk.ReadHeader(image);
        Findings after = Examine(image, repaired, progress: null);
        return after.ToReport(Math.Max(0, before.Corruptions - after.Corruptions), Math.Max(0, before.Leaks - after.Leaks), actions);
    }

    private sealed class Findings
    {
        public int Corruptions;
        public int RepairableCorruptions;
        public int Leaks;
        public long End;
        public readonly List<string> Messages = [];

        public void Add(string message)
        {
            if (Messages.Count < MaximumMessages)
            {
                Messages.Add(message);
            }
        }

        public Qcow2CheckReport ToReport(int corruptionsFixed, int leaksFixed, List<string> actions) => new()
        {
            Corruptions = Corruptions,
            Leaks = Leaks,
            CorruptionsFixed = corruptionsFixed,
            LeaksFixed = leaksFixed,
            Messages = [.. Messages, .. actions],
            ImageEndOffset = End,
        };
    }

    private static Findings Examine(IBlockDevice image, Qcow2Header header, Action<long, long>? progress)
    {
        Findings findings = new();
        ReferenceCounts references = ReferenceScanner.Scan(image, header, includeRefcountStructure: true, progress);
        foreach (string corruption in references.Corruptions)
        {
            findings.Corruptions++;
            findings.Add("ERROR " + corruption);
        }
        ulong[] refcounts = ReadRefcounts(image, header, references.ClusterCount, findings);
        int clusterBits = header.ClusterBits;
        long limit = Math.Max(refcounts.LongLength, references.ClusterCount);
        for (long c = 0; c < limit; c++)
        {
            ulong refcount = c < refcounts.LongLength ? refcounts[c] : 0;
            ulong referenced = c < references.ClusterCount ? references.Counts[c] : 0UL;
            if (refcount != 0 || referenced != 0)
            {
                findings.End = (c + 1) << clusterBits;
            }
            if (refcount == referenced)
            {
                continue;
            }
            if (refcount < referenced)
            {
                findings.Corruptions++;
                findings.RepairableCorruptions++;
                findings.Add($"ERROR cluster {c} refcount={refcount} reference={referenced}");
            }
            else
            {
                findings.Leaks++;
                findings.Add(referenced == 0 ? $"Leaked cluster {c} refcount={refcount} reference=0" : $"ERROR cluster {c} refcount={refcount} reference={referenced} (leak)");
            }
        }
        ulong RefcountOf(long offset)
        {
            long c = offset >> clusterBits;
            return c < refcounts.LongLength ? refcounts[c] : 0;
        }
        foreach ((int index, long offset, bool copied) in references.L1Entries)
        {
            if (copied != (RefcountOf(offset) == 1))
            {
                findings.Corruptions++;
                findings.RepairableCorruptions++;
                findings.Add($"ERROR OFLAG_COPIED L2 cluster: l1_index={index} l1_entry=0x{offset:x} refcount={RefcountOf(offset)}");
            }
        }
        foreach ((long table, int index, long host, bool copied) in references.DataEntries)
        {
            if (copied != (RefcountOf(host) == 1))
            {
                findings.Corruptions++;
                findings.RepairableCorruptions++;
                findings.Add($"ERROR OFLAG_COPIED data cluster: l2 table 0x{table:x} index {index} host 0x{host:x} refcount={RefcountOf(host)}");
            }
        }
        return findings;
    }

    /// <summary>The refcount of every cluster as stored on disk.</summary>
    private static ulong[] ReadRefcounts(IBlockDevice image, Qcow2Header header, long fileClusters, Findings findings)
    {
        int clusterBits = header.ClusterBits;
        int blockBits = clusterBits + 3 - header.RefcountOrder;
        long tableBytes = (long)header.RefcountTableClusters << clusterBits;
        byte[] table = new byte[tableBytes];
        if (DeviceIo.ReadBytes(image, header.RefcountTableOffset, table) != IoStatus.Ok)
        {
            findings.Corruptions++;
            findings.Add("ERROR cannot read the refcount table");
            return [];
        }
        ulong[] refcounts = new ulong[fileClusters];
        using AlignedBlock block = new(header.ClusterSize);
        for (int i = 0; i < table.Length / 8; i++)
        {
            long offset = (long)(BinaryPrimitives.ReadUInt64BigEndian(table.AsSpan(i * 8)) & ~Qcow2Format.RefcountTableReservedMask);
            if (offset == 0 || (offset & (header.ClusterSize - 1)) != 0 || offset >= image.Info.SizeBytes)
            {
                continue; // reported by the reference scan
            }
            if (DeviceIo.ReadClamped(image, offset, block) != IoStatus.Ok)
            {
                findings.Corruptions++;
                findings.Add($"ERROR cannot read refcount block {i}");
                continue;
            }
            long first = (long)i << blockBits;
            for (long j = 0; j < 1L << blockBits; j++)
            {
                ulong value = RefcountCodec.Get(block.Span, header.RefcountOrder, (int)j);
                long cluster = first + j;
                if (value == 0)
                {
                    continue;
                }
                if (cluster >= refcounts.LongLength)
                {
                    // Refcounts beyond the end of the file: clusters that hold nothing, leaked.
                    findings.Leaks++;
                    findings.Add($"Leaked cluster {cluster} (beyond the end of the file) refcount={value}");
                    continue;
                }
                refcounts[cluster] = value;
            }
        }
        return refcounts;
    }

    /// <summary>Rebuilds refcounts from the references, then makes every COPIED bit agree with them.</summary>
    private static IoStatus Repair(IBlockDevice image, Qcow2Header header, List<string> actions)
    {
        ReferenceCounts references = ReferenceScanner.Scan(image, header, includeRefcountStructure: false);
        IoStatus status = RefcountStructure.WriteFresh(image, references.Counts, header.ClusterBits, header.RefcountOrder, out long tableOffset, out int tableClusters, out _);
        if (status != IoStatus.Ok)
        {
            return status;
        }
        using AlignedBlock first = new(512);
        status = DeviceIo.ReadClamped(image, 0, first);
        if (status != IoStatus.Ok)
        {
            return status;
        }
        BinaryPrimitives.WriteUInt64BigEndian(first.Span[Qcow2HeaderField.RefcountTableOffset..], (ulong)tableOffset);
        BinaryPrimitives.WriteUInt32BigEndian(first.Span[Qcow2HeaderField.RefcountTableClusters..], (uint)tableClusters);
        if (header.Version >= 3)
        {
            // Refcounts are consistent again: the dirty bit's promise is kept.
            ulong incompatible = BinaryPrimitives.ReadUInt64BigEndian(first.Span[Qcow2HeaderField.IncompatibleFeatures..]) & ~Qcow2Format.IncompatibleDirty;
            BinaryPrimitives.WriteUInt64BigEndian(first.Span[Qcow2HeaderField.IncompatibleFeatures..], incompatible);
        }
        status = DeviceIo.Write(image, 0, first, 0, 512);
        status = status == IoStatus.Ok ? image.Flush() : status;
        if (status != IoStatus.Ok)
        {
            return status;
        }
        actions.Add($"rebuilt the refcount structure: table at 0x{tableOffset:x}, {tableClusters} cluster(s)");

        // COPIED bits follow the new refcounts (== Cluster mapping ==: bit 63 set iff refcount is exactly one).
        int clusterBits = header.ClusterBits;
        bool IsSingle(long offset) => references.Counts[offset >> clusterBits] == 1;
        int fixedBits = 0;
        byte[] l1 = new byte[(long)header.L1Size * 8];
        if (l1.Length > 0 && DeviceIo.ReadBytes(image, header.L1TableOffset, l1) == IoStatus.Ok)
        {
            bool l1Changed = false;
            foreach ((int index, long offset, bool copied) in references.L1Entries)
            {
                if (copied != IsSingle(offset))
                {
                    ulong entry = BinaryPrimitives.ReadUInt64BigEndian(l1.AsSpan(index * 8)) ^ Qcow2Format.OflagCopied;
                    BinaryPrimitives.WriteUInt64BigEndian(l1.AsSpan(index * 8), entry);
                    l1Changed = true;
                    fixedBits++;
                }
            }
            if (l1Changed)
            {
                status = WriteBytes(image, header.L1TableOffset, l1);
            }
        }
        using AlignedBlock table = new(header.ClusterSize);
        foreach (var group in references.DataEntries.Where(e => e.Copied != IsSingle(e.Host)).GroupBy(e => e.Table))
        {
            if (status != IoStatus.Ok || DeviceIo.ReadClamped(image, group.Key, table) != IoStatus.Ok)
            {
                break;
            }
            foreach (var entry in group)
            {
                int at = entry.Index * header.L2EntrySize;
                ulong word = BinaryPrimitives.ReadUInt64BigEndian(table.Span[at..]) ^ Qcow2Format.OflagCopied;
                BinaryPrimitives.WriteUInt64BigEndian(table.Span[at..], word);
                fixedBits++;
            }
            status = DeviceIo.Write(image, group.Key, table, 0, table.Length);
        }
        if (fixedBits > 0)
        {
            actions.Add($"corrected {fixedBits} COPIED bit(s)");
        }
        return status == IoStatus.Ok ? image.Flush() : status;
    }

    private static IoStatus WriteBytes(IBlockDevice image, long offset, byte[] bytes)
    {
        int length = (bytes.Length + 511) & ~511;
        using AlignedBlock block = new(length);
        IoStatus status = DeviceIo.ReadClamped(image, offset, block);
        if (status != IoStatus.Ok)
        {
            return status;
        }
        bytes.CopyTo(block.Span);
        return DeviceIo.Write(image, offset, block, 0, length);
    }
}
