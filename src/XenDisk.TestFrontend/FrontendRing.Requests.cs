using System.Runtime.CompilerServices;
using XenDisk.Abi;
using XenDisk.Xen;

namespace XenDisk.TestFrontend;

// Producing requests: the general API (data copied into granted pages, completed through a task) and
// the allocation-free API (caller-granted pages), direct, indirect and discard requests, each pushed
// under the submit lock with ring.h's notify check.
internal sealed partial class FrontendRing
{
    /// <summary>
    /// General API: copies <paramref name="writeData"/> into granted pages (persistent ones when
    /// negotiated, otherwise fresh grants, read-only for writes as blkfront does), builds a direct
    /// or indirect request and pushes it. Completes with the backend's BLKIF_RSP_*.
    /// </summary>
    public async Task<short> SubmitDataAsync(byte operation, long sector, ReadOnlyMemory<byte> writeData, Memory<byte> readDestination, int maxSegments)
    {
        if (_halted || _stopping)
        {
            return BlkifStatus.Error;
        }

        await _slots.WaitAsync().ConfigureAwait(false);
        var completion = new TaskCompletion();
        StartData(completion, operation, sector, writeData, readDestination, maxSegments);
        return await completion.Task.ConfigureAwait(false);
    }

    /// <summary>General API: a request without data (flush) or a discard.</summary>
    public async Task<short> SubmitControlAsync(byte operation, long sector, long discardSectors, byte discardFlag)
    {
        if (_halted || _stopping)
        {
            return BlkifStatus.Error;
        }

        await _slots.WaitAsync().ConfigureAwait(false);
        var completion = new TaskCompletion();
        RequestShadow shadow = TakeShadow();
        shadow.Completion = completion;
        if (operation == BlkifOperation.Discard)
        {
            PushDiscard(shadow, sector, discardSectors, discardFlag);
        }
        else
        {
            PushDirect(shadow, operation, sector, []);
        }

        return await completion.Task.ConfigureAwait(false);
    }

    /// <summary>
    /// Allocation-free submission with caller-owned, already granted pages (the load generator).
    /// Returns false when no slot is free or the ring is halted.
    /// </summary>
    public bool TrySubmit(byte operation, long sector, ReadOnlySpan<BlkifRequestSegment> segments, long discardSectors, IRequestCompletion completion, int token)
    {
        if (_halted || _stopping || !_slots.Wait(0))
        {
            return false;
        }

        RequestShadow shadow = TakeShadow();
        shadow.Completion = completion;
        shadow.Token = token;
        if (operation == BlkifOperation.Discard)
        {
            PushDiscard(shadow, sector, discardSectors, 0);
        }
        else if (segments.Length > BlkifLimits.MaxSegmentsPerRequest)
        {
            // blkfront's way past 11 pages: the segment list goes in indirect pages (from the pool).
            PushIndirect(shadow, operation, sector, segments);
        }
        else
        {
            PushDirect(shadow, operation, sector, segments);
        }

        return true;
    }

    private void StartData(TaskCompletion completion, byte operation, long sector, ReadOnlyMemory<byte> writeData, Memory<byte> readDestination, int maxSegments)
    {
        bool isRead = operation == BlkifOperation.Read;
        int length = isRead ? readDestination.Length : writeData.Length;
        int segmentCount = (length + XenPage.Size - 1) / XenPage.Size;
        RequestShadow shadow = TakeShadow();
        shadow.ReadDestination = readDestination;
        shadow.OwnedPageCount = segmentCount;
        Span<BlkifRequestSegment> segments = segmentCount <= BlkifLimits.MaxSegmentsPerRequest
            ? stackalloc BlkifRequestSegment[BlkifLimits.MaxSegmentsPerRequest]
            : new BlkifRequestSegment[segmentCount];
        for (int i = 0; i < segmentCount; i++)
        {
            int chunk = Math.Min(XenPage.Size, length - (i * XenPage.Size));
            GrantedPage page = AcquirePage(readOnlyForBackend: !isRead, out bool pooled);
            shadow.Pages[i] = page;
            shadow.PagePooled[i] = pooled;
            if (!isRead)
            {
                writeData.Span.Slice(i * XenPage.Size, chunk).CopyTo(page.Page.Span);
            }

            segments[i] = new BlkifRequestSegment
            {
                GrantRef = page.GrantRef,
                FirstSector = 0,
                LastSector = (byte)((chunk >> BlkifLimits.SectorShift) - 1),
            };
        }

        shadow.Completion = completion;
        if (segmentCount > BlkifLimits.MaxSegmentsPerRequest)
        {
            if (segmentCount > maxSegments)
            {
                throw new ArgumentOutOfRangeException(nameof(writeData), "More segments than negotiated.");
            }

            PushIndirect(shadow, operation, sector, segments[..segmentCount]);
        }
        else
        {
            PushDirect(shadow, operation, sector, segments[..segmentCount]);
        }
    }

    private RequestShadow TakeShadow()
    {
        lock (_submitLock)
        {
            RequestShadow shadow = _shadows[_freeShadows[--_freeCount]];
            shadow.InUse = true;
            shadow.Operation = 0;
            shadow.DataOperation = 0;
            shadow.OwnedPageCount = 0;
            shadow.IndirectCount = 0;
            shadow.ReadDestination = default;
            shadow.Token = 0;
            _outstanding++;
            return shadow;
        }
    }

    private unsafe void PushDirect(RequestShadow shadow, byte operation, long sector, ReadOnlySpan<BlkifRequestSegment> segments)
    {
        shadow.Operation = operation;
        shadow.DataOperation = operation;
        lock (_submitLock)
        {
            byte* slot = SlotAddress(_requestProducerPrivate);
            if (Protocol == BlkifProtocol.X86_32)
            {
                var request = new BlkifRequest32 { Operation = operation, NrSegments = (byte)segments.Length, Handle = _handle, Id = shadow.Id, SectorNumber = (ulong)sector };
                segments.CopyTo(request.Segments);
                Unsafe.WriteUnaligned(slot, request);
            }
            else
            {
                var request = new BlkifRequest64 { Operation = operation, NrSegments = (byte)segments.Length, Handle = _handle, Id = shadow.Id, SectorNumber = (ulong)sector };
                segments.CopyTo(request.Segments);
                Unsafe.WriteUnaligned(slot, request);
            }

            _requestProducerPrivate++;
            PushRequestsAndCheckNotify();
        }
    }

    private unsafe void PushIndirect(RequestShadow shadow, byte operation, long sector, ReadOnlySpan<BlkifRequestSegment> segments)
    {
        shadow.Operation = BlkifOperation.Indirect;
        shadow.DataOperation = operation;
        int pages = (segments.Length + BlkifLimits.SegmentsPerIndirectPage - 1) / BlkifLimits.SegmentsPerIndirectPage;
        shadow.IndirectCount = pages;
        BlkifIndirectRefArray refs = default;
        for (int p = 0; p < pages; p++)
        {
            // The backend only reads indirect pages: blkfront grants them read-only unless persistent.
            GrantedPage page = AcquirePage(readOnlyForBackend: true, out bool pooled);
            shadow.IndirectPages[p] = page;
            shadow.IndirectPooled[p] = pooled;
            refs[p] = page.GrantRef;
            int first = p * BlkifLimits.SegmentsPerIndirectPage;
            int count = Math.Min(BlkifLimits.SegmentsPerIndirectPage, segments.Length - first);
            segments.Slice(first, count).CopyTo(new Span<BlkifRequestSegment>((void*)page.Page.Address, BlkifLimits.SegmentsPerIndirectPage));
        }

        lock (_submitLock)
        {
            byte* slot = SlotAddress(_requestProducerPrivate);
            if (Protocol == BlkifProtocol.X86_32)
            {
                var request = new BlkifRequestIndirect32 { Operation = BlkifOperation.Indirect, IndirectOperation = operation, NrSegments = (ushort)segments.Length, Id = shadow.Id, SectorNumber = (ulong)sector, Handle = _handle, IndirectGrantRefs = refs };
                Unsafe.WriteUnaligned(slot, request);
            }
            else
            {
                var request = new BlkifRequestIndirect64 { Operation = BlkifOperation.Indirect, IndirectOperation = operation, NrSegments = (ushort)segments.Length, Id = shadow.Id, SectorNumber = (ulong)sector, Handle = _handle, IndirectGrantRefs = refs };
                Unsafe.WriteUnaligned(slot, request);
            }

            _requestProducerPrivate++;
            PushRequestsAndCheckNotify();
        }
    }

    private unsafe void PushDiscard(RequestShadow shadow, long sector, long sectorCount, byte flag)
    {
        shadow.Operation = BlkifOperation.Discard;
        shadow.DataOperation = BlkifOperation.Discard;
        lock (_submitLock)
        {
            byte* slot = SlotAddress(_requestProducerPrivate);
            if (Protocol == BlkifProtocol.X86_32)
            {
                Unsafe.WriteUnaligned(slot, new BlkifRequestDiscard32 { Operation = BlkifOperation.Discard, Flag = flag, Handle = _handle, Id = shadow.Id, SectorNumber = (ulong)sector, NrSectors = (ulong)sectorCount });
            }
            else
            {
                Unsafe.WriteUnaligned(slot, new BlkifRequestDiscard64 { Operation = BlkifOperation.Discard, Flag = flag, Handle = _handle, Id = shadow.Id, SectorNumber = (ulong)sector, NrSectors = (ulong)sectorCount });
            }

            _requestProducerPrivate++;
            PushRequestsAndCheckNotify();
        }
    }

    /// <summary>
    /// RING_PUSH_REQUESTS_AND_CHECK_NOTIFY (ring.h): publish req_prod after the slots (release),
    /// then - after a full barrier, so that the read of req_event cannot move before the publish -
    /// notify only if the backend asked to be woken for an index in (old, new].
    /// </summary>
    private unsafe void PushRequestsAndCheckNotify()
    {
        uint old = Header->RequestProducer;
        uint next = _requestProducerPrivate;
        Volatile.Write(ref Header->RequestProducer, next);
        Interlocked.MemoryBarrier();
        uint requestEvent = Volatile.Read(ref Header->RequestEvent);
        if (unchecked(next - requestEvent) < unchecked(next - old))
        {
            Notify();
        }
    }

    /// <summary>Completes a general-API request; continuations never run on the completion thread.</summary>
    private sealed class TaskCompletion : IRequestCompletion
    {
        private readonly TaskCompletionSource<short> _source = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Task<short> Task => _source.Task;

        public void OnCompleted(int token, short status) => _source.TrySetResult(status);
    }
}
