using System.Runtime.InteropServices;
using XenDisk.Abi;
using XenDisk.Storage;
using XenDisk.Xen;

namespace XenDisk.Backend.DataPlane;

// Getting at the guest's data: grant mapping (with the persistent-grant cache) or grant copy
// through bounce buffers, and fetching the segment lists of indirect requests.
public sealed partial class BlkifRing
{
    private enum DataAccess
    {
        Ready,
        /// <summary>A grant could not be mapped or copied: the guest's fault, BLKIF_RSP_ERROR.</summary>
        BadGrant,
        /// <summary>Not enough bounce buffers free right now.</summary>
        NoBuffers,
    }

    /// <summary>
    /// Copies an indirect request's segment list out of its granted pages into the context's private
    /// array, once; validation then looks only at that copy. Only the bytes of nr_segments segments are
    /// read, whatever the pages hold beyond them.
    /// </summary>
    private unsafe RequestCheck FetchIndirectSegments(RequestContext context)
    {
        ref BlkifRequestInfo request = ref context.Request;
        int pages = request.IndirectPageCount;
        int bytes = request.SegmentCount * BlkifRequestSegment.Size;
        ReadOnlySpan<uint> refs = ((ReadOnlySpan<uint>)request.IndirectGrantRefs)[..pages];

        if (_bounce is not null)
        {
            // Grant-copy path: no guest page is mapped, not even these.
            Span<GrantCopySegment> copies = context.CopySegments.AsSpan(0, pages);
            for (int i = 0; i < pages; i++)
            {
                int length = Math.Min(XenPage.Size, bytes - (i * XenPage.Size));
                copies[i] = GrantCopySegment.FromGuest(Setup.FrontendDomainId, refs[i], 0, context.SegmentsAddress + (i * XenPage.Size), (ushort)length);
            }

            Statistics.GrantCopied(pages);
            return CopySucceeded(copies) ? RequestCheck.Ok : RequestCheck.BadGrant;
        }

        // With persistent grants a frontend reuses its indirect pages as it reuses data pages (Linux
        // blkfront takes both from one pool), so they go through the same cache, as in Linux blkback's
        // xen_blkbk_parse_indirect: no map and unmap per indirect request.
        if (_persistent is not null && CopyIndirectThroughCache(refs, bytes, context))
        {
            return RequestCheck.Ok;
        }

        if (Setup.Grants.MapGrantRefs(Setup.FrontendDomainId, refs, writable: false, out nint address) != 0)
        {
            return RequestCheck.BadGrant;
        }

        Statistics.GrantMapped();
        new ReadOnlySpan<byte>((void*)address, bytes).CopyTo(MemoryMarshal.AsBytes(context.Segments.AsSpan()));
        Statistics.GrantUnmapped(Setup.Grants.Unmap(address, pages) == 0);
        return RequestCheck.Ok;
    }

    /// <summary>
    /// Copies the segment list out of indirect pages held in the persistent cache. False when a page
    /// cannot enter it (cache full of in-use entries, or a grant that cannot be mapped writable, as a
    /// read-only indirect grant cannot): the caller then maps the pages for this request only.
    /// </summary>
    private unsafe bool CopyIndirectThroughCache(ReadOnlySpan<uint> refs, int bytes, RequestContext context)
    {
        PersistentGrantCache cache = _persistent!;
        Span<byte> destination = MemoryMarshal.AsBytes(context.Segments.AsSpan());
        long now = _now;
        for (int i = 0; i < refs.Length; i++)
        {
            int entry = cache.Acquire(refs[i]);
            if (entry < 0)
            {
                return false;
            }

            int offset = i * XenPage.Size;
            int length = Math.Min(XenPage.Size, bytes - offset);
            new ReadOnlySpan<byte>((void*)cache.AddressOf(entry), length).CopyTo(destination[offset..]);
            cache.Release(entry, now);
        }

        return true;
    }

    /// <summary>Makes the request's data addressable: <see cref="RequestContext.Buffers"/> gets one buffer per segment.</summary>
    private DataAccess AcquireData(RequestContext context) =>
        _bounce is not null ? AcquireBounceBuffers(context) : MapData(context);

    /// <summary>Returns what <see cref="AcquireData"/> took; for a grant-copy read, first copies the data
    /// to the guest. False when that copy failed.</summary>
    private bool ReleaseData(RequestContext context)
    {
        if (_bounce is not null)
        {
            bool delivered = true;
            if (context.Request.Kind == RingOperation.Read && context.Result == IoStatus.Ok)
            {
                delivered = context.CopiedOut switch
                {
                    CopyOut.Delivered => true,
                    CopyOut.Failed => false,
                    _ => CopyToGuest(context),
                };
            }

            context.CopiedOut = CopyOut.None;

            _bounce.Return(context.BouncePages.AsSpan(0, context.BouncePageCount));
            context.BouncePageCount = 0;
            return delivered;
        }

        UnmapData(context);
        return true;
    }

    /// <summary>
    /// Grant-map path. Segments whose grant is in (or can enter) the persistent cache use that page;
    /// the rest are mapped together in one call, writable only when the guest reads (we write into its
    /// pages), read-only when it writes. Each buffer starts first_sect sectors into its page.
    /// </summary>
    private DataAccess MapData(RequestContext context)
    {
        ReadOnlySpan<BlkifRequestSegment> segments = context.RequestSegments;
        int temporary = 0;
        context.PersistentCount = 0;
        if (_persistent is not null)
        {
            for (int i = 0; i < segments.Length; i++)
            {
                int entry = _persistent.Acquire(segments[i].GrantRef);
                if (entry == PersistentGrantCache.MapFailed)
                {
                    ReleasePersistent(context, i);
                    return DataAccess.BadGrant;
                }

                context.PersistentEntries[i] = entry;
                if (entry == PersistentGrantCache.Full)
                {
                    context.MapRefs[temporary++] = segments[i].GrantRef;
                }
                else
                {
                    context.PersistentCount++;
                }
            }
        }
        else
        {
            for (int i = 0; i < segments.Length; i++)
            {
                context.MapRefs[temporary++] = segments[i].GrantRef;
            }
        }

        nint mapping = 0;
        if (temporary > 0)
        {
            bool guestReads = !context.Request.WritesData;
            if (Setup.Grants.MapGrantRefs(Setup.FrontendDomainId, context.MapRefs.AsSpan(0, temporary), guestReads, out mapping) != 0)
            {
                ReleasePersistent(context, segments.Length);
                return DataAccess.BadGrant;
            }

            Statistics.GrantMapped();
            context.Mapping = mapping;
            context.MappingPages = temporary;
        }

        int nextTemporary = 0;
        for (int i = 0; i < segments.Length; i++)
        {
            nint page = _persistent is not null && context.PersistentEntries[i] >= 0
                ? _persistent.AddressOf(context.PersistentEntries[i])
                : mapping + (nextTemporary++ * XenPage.Size);
            context.Buffers[i] = BufferFor(page, segments[i]);
        }

        return DataAccess.Ready;
    }

    private void UnmapData(RequestContext context)
    {
        if (context.Mapping != 0)
        {
            Statistics.GrantUnmapped(Setup.Grants.Unmap(context.Mapping, context.MappingPages) == 0);
            context.Mapping = 0;
            context.MappingPages = 0;
        }

        ReleasePersistent(context, context.Request.SegmentCount);
    }

    /// <summary>Releases the persistent entries taken by the first <paramref name="segmentCount"/> segments.</summary>
    private void ReleasePersistent(RequestContext context, int segmentCount)
    {
        if (_persistent is null || context.PersistentCount == 0)
        {
            return;
        }

        long now = _now;
        for (int i = 0; i < segmentCount; i++)
        {
            if (context.PersistentEntries[i] >= 0)
            {
                _persistent.Release(context.PersistentEntries[i], now);
                context.PersistentEntries[i] = PersistentGrantCache.Full;
            }
        }

        context.PersistentCount = 0;
    }

    /// <summary>
    /// Grant-copy path: one bounce page per segment, rented all at once. For a guest write the data
    /// is copied in now, each segment's status checked.
    /// </summary>
    private DataAccess AcquireBounceBuffers(RequestContext context)
    {
        BounceBufferPool pool = _bounce!;
        ReadOnlySpan<BlkifRequestSegment> segments = context.RequestSegments;
        if (!pool.TryRent(context.BouncePages.AsSpan(0, segments.Length)))
        {
            return DataAccess.NoBuffers;
        }

        context.BouncePageCount = segments.Length;
        for (int i = 0; i < segments.Length; i++)
        {
            context.Buffers[i] = new IoBuffer(pool.AddressOf(context.BouncePages[i]), SegmentBytes(segments[i]));
        }

        if (!context.Request.WritesData)
        {
            return DataAccess.Ready;
        }

        Span<GrantCopySegment> copies = context.CopySegments.AsSpan(0, segments.Length);
        for (int i = 0; i < segments.Length; i++)
        {
            copies[i] = GrantCopySegment.FromGuest(Setup.FrontendDomainId, segments[i].GrantRef, SegmentOffset(segments[i]),
                context.Buffers[i].Address, (ushort)context.Buffers[i].Length);
        }

        Statistics.GrantCopied(segments.Length);
        if (!CopySucceeded(copies))
        {
            pool.Return(context.BouncePages.AsSpan(0, context.BouncePageCount));
            context.BouncePageCount = 0;
            return DataAccess.BadGrant;
        }

        return DataAccess.Ready;
    }

    private bool CopyToGuest(RequestContext context)
    {
        Span<GrantCopySegment> copies = context.CopySegments.AsSpan(0, context.Request.SegmentCount);
        FillCopiesToGuest(context, copies);
        Statistics.GrantCopied(copies.Length);
        return CopySucceeded(copies);
    }

    /// <summary>One copy per segment of a grant-copy read, from its bounce page to the guest's granted page.</summary>
    private void FillCopiesToGuest(RequestContext context, Span<GrantCopySegment> copies)
    {
        ReadOnlySpan<BlkifRequestSegment> segments = context.RequestSegments;
        for (int i = 0; i < segments.Length; i++)
        {
            copies[i] = GrantCopySegment.ToGuest(context.Buffers[i].Address, Setup.FrontendDomainId, segments[i].GrantRef,
                SegmentOffset(segments[i]), (ushort)context.Buffers[i].Length);
        }
    }

    /// <summary>
    /// Grant copy: the reads that io_uring finished in one reap go to their guests in one grant-copy
    /// call, not one each (Linux's gntdev makes one GNTTABOP_copy hypercall per 16 segments of it,
    /// where one call per read made one per read). Each segment carries its own status, so a bad
    /// grant fails only its own request. The batch holds at most the bounce pool's pages, since every
    /// segment in it is one rented page.
    /// </summary>
    private void QueueCopyOut(RequestContext context)
    {
        int segments = context.Request.SegmentCount;
        if (_copyOutSegmentCount + segments > _copyOutSegments.Length)
        {
            FlushCopyOut();
        }

        FillCopiesToGuest(context, _copyOutSegments.AsSpan(_copyOutSegmentCount, segments));
        _copyOutSegmentCount += segments;
        _copyOut[_copyOutCount++] = context.Index;
    }

    /// <summary>Copies the queued reads' data to their guests, then answers them in the order they finished.</summary>
    private void FlushCopyOut()
    {
        if (_copyOutCount == 0)
        {
            return;
        }

        Span<GrantCopySegment> copies = _copyOutSegments.AsSpan(0, _copyOutSegmentCount);
        bool ran = Setup.Grants.Copy(copies) == 0;
        Statistics.GrantCopied(copies.Length);
        int first = 0;
        int count = _copyOutCount;
        _copyOutCount = 0;
        _copyOutSegmentCount = 0;
        for (int i = 0; i < count; i++)
        {
            RequestContext context = _contexts[_copyOut[i]];
            int segments = context.Request.SegmentCount;
            bool delivered = ran && AllCopied(copies.Slice(first, segments));
            first += segments;
            context.CopiedOut = delivered ? CopyOut.Delivered : CopyOut.Failed;
            Complete(context);
        }
    }

    /// <summary>The copy ran and every segment reports GNTST_okay.</summary>
    private bool CopySucceeded(Span<GrantCopySegment> copies) => Setup.Grants.Copy(copies) == 0 && AllCopied(copies);

    /// <summary>Every segment of a copy that ran reports GNTST_okay.</summary>
    private static bool AllCopied(ReadOnlySpan<GrantCopySegment> copies)
    {
        foreach (ref readonly GrantCopySegment copy in copies)
        {
            if (copy.Status != GrantStatus.Okay)
            {
                return false;
            }
        }

        return true;
    }

    private static IoBuffer BufferFor(nint page, BlkifRequestSegment segment) =>
        new(page + SegmentOffset(segment), SegmentBytes(segment));

    /// <summary>first_sect in bytes; validated to be at most 7 sectors, so within the page.</summary>
    private static ushort SegmentOffset(BlkifRequestSegment segment) => (ushort)(segment.FirstSector << BlkifLimits.SectorShift);

    private static int SegmentBytes(BlkifRequestSegment segment) => (segment.LastSector - segment.FirstSector + 1) << BlkifLimits.SectorShift;
}
