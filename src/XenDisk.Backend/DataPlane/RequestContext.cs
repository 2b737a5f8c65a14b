using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using XenDisk.Abi;
using XenDisk.Storage;
using XenDisk.Xen;

namespace XenDisk.Backend.DataPlane;

/// <summary>
/// Everything one in-flight request needs, preallocated: a ring has exactly as many contexts as
/// slots, because a frontend cannot have more requests outstanding than the ring holds (the ring
/// halts a frontend that claims otherwise). Reused for every request; never allocated on the hot path.
/// Ownership: while in flight, the context owns its per-request mapping (<see cref="Mapping"/>), its
/// rented bounce pages and one use of each persistent entry it names; the ring thread releases them
/// when it writes the response.
/// </summary>
internal sealed unsafe class RequestContext
{
    public RequestContext(int index, int maxSegments, bool grantCopy, bool persistentGrants)
    {
        Index = index;

        // Pinned so that the grant-copy path can copy indirect pages straight into it.
        Segments = GC.AllocateArray<BlkifRequestSegment>(maxSegments, pinned: true);
        SegmentsAddress = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(Segments));
        Buffers = new IoBuffer[maxSegments];
        MapRefs = new uint[maxSegments];
        PersistentEntries = persistentGrants ? new int[maxSegments] : [];
        BouncePages = grantCopy ? new int[maxSegments] : [];
        CopySegments = grantCopy ? new GrantCopySegment[Math.Max(maxSegments, BlkifLimits.MaxIndirectPagesPerRequest)] : [];
    }

    public int Index { get; }

    /// <summary>The private copy of the request; see <see cref="BlkifRequestInfo"/>.</summary>
    public BlkifRequestInfo Request;

    /// <summary>The private copy of the segments (direct or fetched from indirect pages).</summary>
    public readonly BlkifRequestSegment[] Segments;

    public readonly nint SegmentsAddress;

    /// <summary>Where each segment's data is in our address space.</summary>
    public readonly IoBuffer[] Buffers;

    /// <summary>Grant refs mapped together for this request only.</summary>
    public readonly uint[] MapRefs;

    /// <summary>Per segment: the persistent entry it uses, or -1.</summary>
    public readonly int[] PersistentEntries;

    public readonly int[] BouncePages;

    public readonly GrantCopySegment[] CopySegments;

    /// <summary>The per-request mapping (0 when none) and its page count.</summary>
    public nint Mapping;

    public int MappingPages;

    public int PersistentCount;

    public int BouncePageCount;

    /// <summary>Grant copy: a read's data was already copied to the guest in a batch with other reads
    /// (<see cref="CopyOut.Delivered"/>) or that copy failed for this request; <see cref="CopyOut.None"/> otherwise.</summary>
    public CopyOut CopiedOut;

    public IoStatus Result;

    public long StartTimestamp;

    /// <summary>io_uring operations of this request still in flight (the fast path); 0 otherwise.</summary>
    public int PendingOperations;

    /// <summary>The device's remap lease, released when the last operation completes.</summary>
    public RemapLease Lease;

    /// <summary>struct iovec[] in native memory for the fast path (stable while the kernel holds it);
    /// owned by the ring, which frees it after its io_uring is closed. 0 with the thread engine.</summary>
    public nint Iovecs;

    public ReadOnlySpan<BlkifRequestSegment> RequestSegments => Segments.AsSpan(0, Request.SegmentCount);
}

/// <summary>Where a grant-copy read's copy to the guest stands (<see cref="RequestContext.CopiedOut"/>).</summary>
internal enum CopyOut : byte
{
    None,
    Delivered,
    Failed,
}
