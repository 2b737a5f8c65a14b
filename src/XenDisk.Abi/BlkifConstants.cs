namespace XenDisk.Abi;

/// <summary>Operation codes of xen/include/public/io/blkif.h ("BLKIF_OP_*").</summary>
public static class BlkifOperation
{
    public const byte Read = 0;
    public const byte Write = 1;
    /// <summary>All earlier writes complete before this one, which is then made durable (blkif.h "feature-barrier").</summary>
    public const byte WriteBarrier = 2;
    /// <summary>Commit the disk's volatile write cache (blkif.h "feature-flush-cache").</summary>
    public const byte FlushDiskCache = 3;
    /// <summary>Reserved for the never-merged BLKIF_OP_RESERVED_1 (device-specific); answered with EOPNOTSUPP.</summary>
    public const byte Reserved1 = 4;
    public const byte Discard = 5;
    public const byte Indirect = 6;
}

/// <summary>Response status codes of blkif.h ("BLKIF_RSP_*").</summary>
public static class BlkifStatus
{
    public const short EOpNotSupp = -2;
    public const short Error = -1;
    public const short Okay = 0;
}

/// <summary>Limits and flags of blkif.h.</summary>
public static class BlkifLimits
{
    /// <summary>BLKIF_MAX_SEGMENTS_PER_REQUEST: segments that fit in a direct request.</summary>
    public const int MaxSegmentsPerRequest = 11;

    /// <summary>BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: grant refs in an indirect request.</summary>
    public const int MaxIndirectPagesPerRequest = 8;

    /// <summary>Segments described by one indirect page: XEN_PAGE_SIZE / sizeof(struct blkif_request_segment).</summary>
    public const int SegmentsPerIndirectPage = XenPage.Size / BlkifRequestSegment.Size;

    /// <summary>Upper bound of indirect segments any request can name (8 pages of 512 segments).</summary>
    public const int MaxIndirectSegments = MaxIndirectPagesPerRequest * SegmentsPerIndirectPage;

    /// <summary>Sector numbers and first_sect/last_sect are always in 512-byte units, whatever the
    /// logical sector size (blkif.h, "sector-size").</summary>
    public const int SectorShift = 9;
    public const int SectorSize = 1 << SectorShift;

    /// <summary>Highest valid last_sect: a segment cannot reach past its 4 KiB page.</summary>
    public const byte MaxSectorInPage = (XenPage.Size / SectorSize) - 1;

    /// <summary>BLKIF_DISCARD_SECURE: the "flag" of a discard request asking for secure erase.</summary>
    public const byte DiscardSecure = 1;

    /// <summary>max-ring-page-order the protocol allows (XENBUS_MAX_RING_GRANT_ORDER in Linux).</summary>
    public const int MaxRingPageOrder = 4;
}

/// <summary>The "info" bits of blkif.h ("VDISK_*").</summary>
[Flags]
public enum VdiskInfo : uint
{
    None = 0,
    CdRom = 1,
    Removable = 2,
    ReadOnly = 4,
}

/// <summary>The Xen page: the unit of grants and of ring pages, whatever the host page size.</summary>
public static class XenPage
{
    public const int Shift = 12;
    public const int Size = 1 << Shift;
}

/// <summary>Which ABI the frontend uses for ring slots (blkif.h "protocol": x86_32-abi, x86_64-abi).</summary>
public enum BlkifProtocol
{
    /// <summary>"x86_64-abi", also the native layout of a 64-bit dom0 and the default when the key is absent.</summary>
    X86_64,
    /// <summary>"x86_32-abi": 64-bit fields are only 4-byte aligned.</summary>
    X86_32,
}

public static class BlkifProtocolNames
{
    public const string X86_32 = "x86_32-abi";
    public const string X86_64 = "x86_64-abi";

    /// <summary>Parses the xenstore "protocol" key; an absent key means the native ABI.</summary>
    public static bool TryParse(string? value, out BlkifProtocol protocol)
    {
        switch (value)
        {
            case null or "" or X86_64:
                protocol = BlkifProtocol.X86_64;
                return true;
            case X86_32:
                protocol = BlkifProtocol.X86_32;
                return true;
            default:
                protocol = default;
                return false;
        }
    }

    public static string ToWire(BlkifProtocol protocol) => protocol == BlkifProtocol.X86_32 ? X86_32 : X86_64;
}
