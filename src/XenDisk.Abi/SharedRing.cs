using System.Numerics;
using System.Runtime.InteropServices;

namespace XenDisk.Abi;

/// <summary>The header of a shared ring (xen/include/public/io/ring.h, DEFINE_RING_TYPES):
/// four free-running 32-bit indices, then private padding up to 64 bytes, then the slots.</summary>
[StructLayout(LayoutKind.Explicit, Size = Size)]
public struct SharedRingHeader
{
    public const int Size = 64;
    public const int RequestProducerOffset = 0;
    public const int RequestEventOffset = 4;
    public const int ResponseProducerOffset = 8;
    public const int ResponseEventOffset = 12;

    [FieldOffset(RequestProducerOffset)] public uint RequestProducer;
    [FieldOffset(RequestEventOffset)] public uint RequestEvent;
    [FieldOffset(ResponseProducerOffset)] public uint ResponseProducer;
    [FieldOffset(ResponseEventOffset)] public uint ResponseEvent;
}

/// <summary>Ring geometry: __RING_SIZE rounds the slot count down to a power of two.</summary>
public static class RingGeometry
{
    /// <summary>A slot holds either a request or a response: the size of union blkif_sring_entry.</summary>
    public static int SlotSize(BlkifProtocol protocol) =>
        protocol == BlkifProtocol.X86_32 ? BlkifRequest32.Size : BlkifRequest64.Size;

    public static int ResponseSize(BlkifProtocol protocol) =>
        protocol == BlkifProtocol.X86_32 ? BlkifResponse32.Size : BlkifResponse64.Size;

    /// <summary>Number of slots in a ring of 2^order pages.</summary>
    public static int EntryCount(BlkifProtocol protocol, int pageOrder)
    {
        if ((uint)pageOrder > BlkifLimits.MaxRingPageOrder)
        {
            throw new ArgumentOutOfRangeException(nameof(pageOrder));
        }

        int bytes = (XenPage.Size << pageOrder) - SharedRingHeader.Size;
        return (int)BitOperations.RoundUpToPowerOf2((uint)(bytes / SlotSize(protocol)) + 1) >> 1;
    }

    /// <summary>Entries for a ring of <paramref name="pageCount"/> pages (a power of two).</summary>
    public static int EntryCountForPages(BlkifProtocol protocol, int pageCount) =>
        EntryCount(protocol, BitOperations.Log2((uint)pageCount));
}
