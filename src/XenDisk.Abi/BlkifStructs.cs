using System.Runtime.InteropServices;

namespace XenDisk.Abi;

// One type per wire struct of xen/include/public/io/blkif.h, with the offsets written out so that
// the layout never depends on the compiler's packing. The x86_32 variants differ only in that
// uint64_t is 4-byte aligned on i386. BlkifLayoutTests pins every size and offset.

/// <summary>struct blkif_request_segment: one 4 KiB granted page and the sectors used in it.</summary>
[StructLayout(LayoutKind.Explicit, Size = Size)]
public struct BlkifRequestSegment
{
    public const int Size = 8;
    [FieldOffset(0)] public uint GrantRef;
    /// <summary>First 512-byte sector in the page to transfer (inclusive).</summary>
    [FieldOffset(4)] public byte FirstSector;
    /// <summary>Last 512-byte sector in the page to transfer (inclusive).</summary>
    [FieldOffset(5)] public byte LastSector;
}

/// <summary>Room for BLKIF_MAX_SEGMENTS_PER_REQUEST segments inside a request.</summary>
[System.Runtime.CompilerServices.InlineArray(BlkifLimits.MaxSegmentsPerRequest)]
public struct BlkifSegmentArray
{
    private BlkifRequestSegment _first;
}

/// <summary>Room for BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST grant refs inside an indirect request.</summary>
[System.Runtime.CompilerServices.InlineArray(BlkifLimits.MaxIndirectPagesPerRequest)]
public struct BlkifIndirectRefArray
{
    private uint _first;
}

/// <summary>struct blkif_request (read, write, barrier, flush) on x86_64.</summary>
[StructLayout(LayoutKind.Explicit, Size = Size)]
public struct BlkifRequest64
{
    public const int Size = 112;
    [FieldOffset(0)] public byte Operation;
    [FieldOffset(1)] public byte NrSegments;
    [FieldOffset(2)] public ushort Handle;
    [FieldOffset(8)] public ulong Id;
    [FieldOffset(16)] public ulong SectorNumber;
    [FieldOffset(24)] public BlkifSegmentArray Segments;
}

/// <summary>struct blkif_request on x86_32.</summary>
[StructLayout(LayoutKind.Explicit, Size = Size)]
public struct BlkifRequest32
{
    public const int Size = 108;
    [FieldOffset(0)] public byte Operation;
    [FieldOffset(1)] public byte NrSegments;
    [FieldOffset(2)] public ushort Handle;
    [FieldOffset(4)] public ulong Id;
    [FieldOffset(12)] public ulong SectorNumber;
    [FieldOffset(20)] public BlkifSegmentArray Segments;
}

/// <summary>struct blkif_request_discard on x86_64.</summary>
[StructLayout(LayoutKind.Explicit, Size = Size)]
public struct BlkifRequestDiscard64
{
    public const int Size = 32;
    [FieldOffset(0)] public byte Operation;
    /// <summary>BLKIF_DISCARD_SECURE or 0.</summary>
    [FieldOffset(1)] public byte Flag;
    [FieldOffset(2)] public ushort Handle;
    [FieldOffset(8)] public ulong Id;
    [FieldOffset(16)] public ulong SectorNumber;
    [FieldOffset(24)] public ulong NrSectors;
}

/// <summary>struct blkif_request_discard on x86_32.</summary>
[StructLayout(LayoutKind.Explicit, Size = Size)]
public struct BlkifRequestDiscard32
{
    public const int Size = 28;
    [FieldOffset(0)] public byte Operation;
    [FieldOffset(1)] public byte Flag;
    [FieldOffset(2)] public ushort Handle;
    [FieldOffset(4)] public ulong Id;
    [FieldOffset(12)] public ulong SectorNumber;
    [FieldOffset(20)] public ulong NrSectors;
}

/// <summary>struct blkif_request_indirect on x86_64: segments live in up to 8 granted pages.</summary>
[StructLayout(LayoutKind.Explicit, Size = Size)]
public struct BlkifRequestIndirect64
{
    public const int Size = 64;
    [FieldOffset(0)] public byte Operation;
    /// <summary>BLKIF_OP_READ or BLKIF_OP_WRITE; anything else is refused.</summary>
    [FieldOffset(1)] public byte IndirectOperation;
    [FieldOffset(2)] public ushort NrSegments;
    [FieldOffset(8)] public ulong Id;
    [FieldOffset(16)] public ulong SectorNumber;
    [FieldOffset(24)] public ushort Handle;
    [FieldOffset(28)] public BlkifIndirectRefArray IndirectGrantRefs;
}

/// <summary>struct blkif_request_indirect on x86_32 (padded to 64 bytes by blkif.h).</summary>
[StructLayout(LayoutKind.Explicit, Size = Size)]
public struct BlkifRequestIndirect32
{
    public const int Size = 64;
    [FieldOffset(0)] public byte Operation;
    [FieldOffset(1)] public byte IndirectOperation;
    [FieldOffset(2)] public ushort NrSegments;
    [FieldOffset(4)] public ulong Id;
    [FieldOffset(12)] public ulong SectorNumber;
    [FieldOffset(20)] public ushort Handle;
    [FieldOffset(24)] public BlkifIndirectRefArray IndirectGrantRefs;
}

/// <summary>struct blkif_response on x86_64.</summary>
[StructLayout(LayoutKind.Explicit, Size = Size)]
public struct BlkifResponse64
{
    public const int Size = 16;
    [FieldOffset(0)] public ulong Id;
    [FieldOffset(8)] public byte Operation;
    [FieldOffset(10)] public short Status;
}

/// <summary>struct blkif_response on x86_32.</summary>
[StructLayout(LayoutKind.Explicit, Size = Size)]
public struct BlkifResponse32
{
    public const int Size = 12;
    [FieldOffset(0)] public ulong Id;
    [FieldOffset(8)] public byte Operation;
    [FieldOffset(10)] public short Status;
}
