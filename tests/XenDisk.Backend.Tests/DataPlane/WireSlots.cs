using System.Buffers.Binary;
using XenDisk.Abi;

namespace XenDisk.Backend.Tests.DataPlane;

/// <summary>One data segment as a frontend writes it.</summary>
public readonly record struct Seg(uint GrantRef, byte First, byte Last);

/// <summary>
/// Writes ring slots the way a frontend does, with the offsets of xen/include/public/io/blkif.h
/// spelled out here independently of XenDisk.Abi's structs, so that a layout mistake there cannot
/// cancel out against the same mistake in the encoder.
/// </summary>
public static class WireSlots
{
    public static int SlotSize(BlkifProtocol protocol) => protocol == BlkifProtocol.X86_32 ? 108 : 112;

    private static int IdOffset(BlkifProtocol p) => p == BlkifProtocol.X86_32 ? 4 : 8;

    private static int SectorOffset(BlkifProtocol p) => p == BlkifProtocol.X86_32 ? 12 : 16;

    /// <summary>struct blkif_request: read, write, barrier, flush. <paramref name="nrSegments"/> overrides the count byte.</summary>
    public static byte[] ReadWrite(BlkifProtocol p, byte operation, ulong id, ulong sector, Seg[] segments, int? nrSegments = null, byte fill = 0)
    {
        byte[] slot = NewSlot(p, fill);
        slot[0] = operation;
        slot[1] = (byte)(nrSegments ?? segments.Length);
        BinaryPrimitives.WriteUInt16LittleEndian(slot.AsSpan(2), 0x1234);
        BinaryPrimitives.WriteUInt64LittleEndian(slot.AsSpan(IdOffset(p)), id);
        BinaryPrimitives.WriteUInt64LittleEndian(slot.AsSpan(SectorOffset(p)), sector);
        int segmentBase = p == BlkifProtocol.X86_32 ? 20 : 24;
        for (int i = 0; i < segments.Length && i < BlkifLimits.MaxSegmentsPerRequest; i++)
        {
            Span<byte> s = slot.AsSpan(segmentBase + (i * 8), 8);
            BinaryPrimitives.WriteUInt32LittleEndian(s, segments[i].GrantRef);
            s[4] = segments[i].First;
            s[5] = segments[i].Last;
        }

        return slot;
    }

    /// <summary>struct blkif_request_discard.</summary>
    public static byte[] Discard(BlkifProtocol p, ulong id, ulong sector, ulong sectors, byte flag = 0, byte fill = 0)
    {
        byte[] slot = NewSlot(p, fill);
        slot[0] = BlkifOperation.Discard;
        slot[1] = flag;
        BinaryPrimitives.WriteUInt64LittleEndian(slot.AsSpan(IdOffset(p)), id);
        BinaryPrimitives.WriteUInt64LittleEndian(slot.AsSpan(SectorOffset(p)), sector);
        BinaryPrimitives.WriteUInt64LittleEndian(slot.AsSpan(p == BlkifProtocol.X86_32 ? 20 : 24), sectors);
        return slot;
    }

    /// <summary>struct blkif_request_indirect.</summary>
    public static byte[] Indirect(BlkifProtocol p, byte indirectOperation, ulong id, ulong sector, int nrSegments, uint[] indirectRefs, byte fill = 0)
    {
        byte[] slot = NewSlot(p, fill);
        slot[0] = BlkifOperation.Indirect;
        slot[1] = indirectOperation;
        BinaryPrimitives.WriteUInt16LittleEndian(slot.AsSpan(2), (ushort)nrSegments);
        BinaryPrimitives.WriteUInt64LittleEndian(slot.AsSpan(IdOffset(p)), id);
        BinaryPrimitives.WriteUInt64LittleEndian(slot.AsSpan(SectorOffset(p)), sector);
        int refsBase = p == BlkifProtocol.X86_32 ? 24 : 28;
        BinaryPrimitives.WriteUInt16LittleEndian(slot.AsSpan(refsBase - 4), 0x1234);
        for (int i = 0; i < indirectRefs.Length && i < BlkifLimits.MaxIndirectPagesPerRequest; i++)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(slot.AsSpan(refsBase + (i * 4)), indirectRefs[i]);
        }

        return slot;
    }

    /// <summary>Any operation byte with an id (struct blkif_request_other).</summary>
    public static byte[] Other(BlkifProtocol p, byte operation, ulong id, byte fill = 0)
    {
        byte[] slot = NewSlot(p, fill);
        slot[0] = operation;
        BinaryPrimitives.WriteUInt64LittleEndian(slot.AsSpan(IdOffset(p)), id);
        return slot;
    }

    /// <summary>Segments as they sit in an indirect page (8 bytes each).</summary>
    public static void WriteIndirectSegments(Span<byte> pages, ReadOnlySpan<Seg> segments)
    {
        for (int i = 0; i < segments.Length; i++)
        {
            Span<byte> s = pages.Slice(i * 8, 8);
            BinaryPrimitives.WriteUInt32LittleEndian(s, segments[i].GrantRef);
            s[4] = segments[i].First;
            s[5] = segments[i].Last;
        }
    }

    /// <summary>A decoded struct blkif_response.</summary>
    public readonly record struct Response(ulong Id, byte Operation, short Status);

    public static Response ReadResponse(ReadOnlySpan<byte> slot) => new(
        BinaryPrimitives.ReadUInt64LittleEndian(slot),
        slot[8],
        BinaryPrimitives.ReadInt16LittleEndian(slot[10..]));

    private static byte[] NewSlot(BlkifProtocol p, byte fill)
    {
        byte[] slot = new byte[SlotSize(p)];
        slot.AsSpan().Fill(fill);
        return slot;
    }
}
