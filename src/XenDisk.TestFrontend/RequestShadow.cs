using XenDisk.Abi;

namespace XenDisk.TestFrontend;

/// <summary>
/// The frontend's private record of one in-flight request (blkfront's struct blk_shadow): what was
/// sent and which pages to release when the response arrives. The request id on the ring is the
/// shadow index in the low 32 bits and a generation in the high 32 bits, so a response that echoes
/// a stale or mangled id is caught.
/// </summary>
internal sealed class RequestShadow
{
    public RequestShadow(int index, int maxSegments)
    {
        Index = index;
        Pages = new GrantedPage[maxSegments];
        PagePooled = new bool[maxSegments];
        int indirectPages = (maxSegments + BlkifLimits.SegmentsPerIndirectPage - 1) / BlkifLimits.SegmentsPerIndirectPage;
        IndirectPages = new GrantedPage[Math.Max(indirectPages, 1)];
        IndirectPooled = new bool[IndirectPages.Length];
    }

    public int Index { get; }

    public uint Generation { get; set; }

    public bool InUse { get; set; }

    public ulong Id => ((ulong)Generation << 32) | (uint)Index;

    /// <summary>The operation on the ring (BLKIF_OP_INDIRECT for indirect requests).</summary>
    public byte Operation { get; set; }

    /// <summary>The data operation (the indirect request's indirect_op, or <see cref="Operation"/>).</summary>
    public byte DataOperation { get; set; }

    /// <summary>Pages whose release is the ring's business (false: the caller owns them).</summary>
    public int OwnedPageCount { get; set; }

    public GrantedPage[] Pages { get; }

    public bool[] PagePooled { get; }

    public int IndirectCount { get; set; }

    public GrantedPage[] IndirectPages { get; }

    public bool[] IndirectPooled { get; }

    /// <summary>Where a read's data goes (general API only).</summary>
    public Memory<byte> ReadDestination { get; set; }

    public IRequestCompletion? Completion { get; set; }

    public int Token { get; set; }
}
