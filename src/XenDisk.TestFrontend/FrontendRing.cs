using System.Runtime.CompilerServices;
using XenDisk.Abi;
using XenDisk.Xen;
using XenDisk.Xen.Simulated;

namespace XenDisk.TestFrontend;

/// <summary>
/// One queue of the frontend: the shared ring pages (granted to the backend), the event channel,
/// the shadows of in-flight requests and the completion thread. Requests are produced under
/// <see cref="_submitLock"/>; responses are consumed only by the completion thread.
/// Ownership: the ring owns its pages, grants and event-channel handle and releases them in
/// <see cref="Teardown"/>, after the backend closed.
/// </summary>
internal sealed class FrontendRing
{
    private readonly SimulatedDomain _guest;
    private readonly uint _backendId;
    private readonly ushort _handle;
    private readonly PersistentGrantPool _pool;
    private readonly Lock _submitLock = new();
    private readonly GuestPageRange _ringPages;
    private readonly uint[] _ringRefs;
    private readonly IEventChannels _events;
    private readonly uint _port;
    private readonly int _slotSize;
    private RequestShadow[] _shadows = [];
    private int[] _freeShadows = [];
    private int _freeCount;
    private SemaphoreSlim _slots = new(0);
    private bool _persistentData;
    private uint _requestProducerPrivate;
    private uint _responseConsumer;
    private Thread? _completionThread;
    private volatile bool _stopping;
    private volatile bool _paused;
    private volatile bool _halted;
    private long _protocolViolations;
    private long _grantEndFailures;
    private long _notificationsSent;
    private int _outstanding;

    public unsafe FrontendRing(int index, SimulatedDomain guest, uint backendId, ushort handle, BlkifProtocol protocol, int pageOrder, PersistentGrantPool pool)
    {
        Index = index;
        _guest = guest;
        _backendId = backendId;
        _handle = handle;
        _pool = pool;
        Protocol = protocol;
        PageOrder = pageOrder;
        Entries = RingGeometry.EntryCount(protocol, pageOrder);
        _slotSize = RingGeometry.SlotSize(protocol);

        // FRONT_RING_INIT over a zeroed SHARED_RING_INIT: producers at 0, both event indices at 1.
        _ringPages = guest.AllocatePages(1 << pageOrder);
        _ringPages.Span.Clear();
        Header->RequestEvent = 1;
        Header->ResponseEvent = 1;
        _ringRefs = new uint[_ringPages.Count];
        for (int i = 0; i < _ringRefs.Length; i++)
        {
            _ringRefs[i] = guest.GrantAccess(backendId, _ringPages[i], readOnly: false);
        }

        _events = guest.Platform.OpenEventChannels();
        _port = _events.BindUnboundPort(backendId);
    }

    public int Index { get; }

    public BlkifProtocol Protocol { get; }

    public int PageOrder { get; }

    public int Entries { get; }

    public int SlotSize => _slotSize;

    public IReadOnlyList<uint> RingRefs => _ringRefs;

    public uint EventChannel => _port;

    public nint RingAddress => _ringPages.Address;

    public unsafe SharedRingHeader* Header => (SharedRingHeader*)_ringPages.Address;

    public long ProtocolViolations => Interlocked.Read(ref _protocolViolations);

    public long GrantEndFailures => Interlocked.Read(ref _grantEndFailures);

    public long NotificationsSent => Interlocked.Read(ref _notificationsSent);

    public int Outstanding => Volatile.Read(ref _outstanding);

    public bool Halted => _halted;

    public uint RequestProducerPrivate
    {
        get
        {
            lock (_submitLock)
            {
                return _requestProducerPrivate;
            }
        }
    }

    /// <summary>Sizes the shadows for the negotiated segment limit and starts the completion thread.</summary>
    public void Activate(int maxSegmentsPerRequest, bool persistentData)
    {
        _persistentData = persistentData;
        _shadows = new RequestShadow[Entries];
        _freeShadows = new int[Entries];
        for (int i = 0; i < Entries; i++)
        {
            _shadows[i] = new RequestShadow(i, maxSegmentsPerRequest);
            _freeShadows[i] = Entries - 1 - i;
        }

        _freeCount = Entries;
        _slots = new SemaphoreSlim(Entries, Entries);
        _completionThread = new Thread(CompletionLoop) { IsBackground = true, Name = $"blkfront queue {Index}" };
        _completionThread.Start();
    }

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

    /// <summary>Raw access: writes bytes into a slot.</summary>
    public unsafe void WriteSlot(uint index, ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length > _slotSize)
        {
            throw new ArgumentOutOfRangeException(nameof(bytes), $"A slot holds {_slotSize} bytes.");
        }

        bytes.CopyTo(new Span<byte>(SlotAddress(index), _slotSize));
    }

    public unsafe void ReadSlot(uint index, Span<byte> destination) =>
        new ReadOnlySpan<byte>(SlotAddress(index), Math.Min(_slotSize, destination.Length)).CopyTo(destination);

    /// <summary>Raw access: publishes req_prod (and the private producer) as given.</summary>
    public unsafe void SetRequestProducer(uint value)
    {
        lock (_submitLock)
        {
            _requestProducerPrivate = value;
            Volatile.Write(ref Header->RequestProducer, value);
        }
    }

    /// <summary>Raw access: writes a slot at the private producer and pushes it with the usual notify check.</summary>
    public uint PushRaw(ReadOnlySpan<byte> bytes)
    {
        lock (_submitLock)
        {
            uint index = _requestProducerPrivate;
            WriteSlot(index, bytes);
            _requestProducerPrivate++;
            PushRequestsAndCheckNotify();
            return index;
        }
    }

    public int Notify()
    {
        Interlocked.Increment(ref _notificationsSent);
        return _events.Notify(_port);
    }

    public void PauseCompletions() => _paused = true;

    /// <summary>Resumes consumption; with <paramref name="skipUnconsumed"/>, responses that arrived meanwhile are dropped unread.</summary>
    public unsafe void ResumeCompletions(bool skipUnconsumed)
    {
        if (skipUnconsumed)
        {
            _responseConsumer = Volatile.Read(ref Header->ResponseProducer);
        }

        _paused = false;

        // Wake our own completion thread: it sets rsp_event again, which it skipped while paused.
        _events.Interrupt();
    }

    /// <summary>Stops the completion thread, fails what is still in flight and releases the ring. Returns ring grants the backend still had mapped.</summary>
    public int Teardown(out int requestsFailed, out int dataGrantsStillMapped)
    {
        _stopping = true;
        _events.Interrupt();
        if (_completionThread is not null && _completionThread != Thread.CurrentThread)
        {
            _completionThread.Join();
        }

        long failuresBefore = GrantEndFailures;
        requestsFailed = 0;
        foreach (RequestShadow shadow in _shadows)
        {
            if (shadow.InUse)
            {
                requestsFailed++;
                Complete(shadow, BlkifStatus.Error);
            }
        }

        dataGrantsStillMapped = (int)(GrantEndFailures - failuresBefore);
        _events.Dispose();

        int stillMapped = 0;
        foreach (uint grantRef in _ringRefs)
        {
            if (!_guest.EndAccess(grantRef))
            {
                stillMapped++;
            }
        }

        if (stillMapped == 0)
        {
            _guest.FreePages(_ringPages);
        }

        return stillMapped;
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

    private GrantedPage AcquirePage(bool readOnlyForBackend, out bool pooled)
    {
        pooled = _persistentData;
        if (pooled)
        {
            return _pool.Rent();
        }

        GuestPage page = _guest.AllocatePage();
        return new GrantedPage(page, _guest.GrantAccess(_backendId, page, readOnlyForBackend));
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

    private unsafe byte* SlotAddress(uint index) =>
        (byte*)_ringPages.Address + SharedRingHeader.Size + ((index & (uint)(Entries - 1)) * (uint)_slotSize);

    private void CompletionLoop()
    {
        while (!_stopping)
        {
            // -1 means Interrupt: a stop request, or a resume that wants the ring looked at.
            int port = _events.WaitPending(-1);
            if (_stopping)
            {
                break;
            }

            if (!_paused && !_halted)
            {
                ConsumeResponses();
            }

            if (port >= 0)
            {
                _events.Unmask((uint)port);
            }
        }
    }

    /// <summary>
    /// Consumes responses up to rsp_prod, then RING_FINAL_CHECK_FOR_RESPONSES: set rsp_event to
    /// the next index, full barrier, look again - a response pushed in between is handled now,
    /// and one pushed after will see rsp_event and notify.
    /// </summary>
    private unsafe void ConsumeResponses()
    {
        while (true)
        {
            uint producer = Volatile.Read(ref Header->ResponseProducer);
            if (unchecked(producer - _responseConsumer) > (uint)Entries)
            {
                // blkfront: "illegal number of responses" - the ring cannot be trusted any more.
                Interlocked.Increment(ref _protocolViolations);
                _halted = true;
                return;
            }

            while (_responseConsumer != producer)
            {
                HandleResponse(_responseConsumer);
                _responseConsumer++;
            }

            Volatile.Write(ref Header->ResponseEvent, _responseConsumer + 1);
            Interlocked.MemoryBarrier();
            if (Volatile.Read(ref Header->ResponseProducer) == _responseConsumer)
            {
                return;
            }
        }
    }

    private unsafe void HandleResponse(uint index)
    {
        byte* slot = SlotAddress(index);
        ulong id;
        byte operation;
        short status;

        // Copy the response out of shared memory once.
        if (Protocol == BlkifProtocol.X86_32)
        {
            BlkifResponse32 response = Unsafe.ReadUnaligned<BlkifResponse32>(slot);
            (id, operation, status) = (response.Id, response.Operation, response.Status);
        }
        else
        {
            BlkifResponse64 response = Unsafe.ReadUnaligned<BlkifResponse64>(slot);
            (id, operation, status) = (response.Id, response.Operation, response.Status);
        }

        uint shadowIndex = (uint)id;
        RequestShadow? shadow = shadowIndex < (uint)_shadows.Length ? _shadows[shadowIndex] : null;
        bool outstanding;
        lock (_submitLock)
        {
            outstanding = shadow is not null && shadow.InUse && shadow.Id == id;
        }

        if (!outstanding)
        {
            Interlocked.Increment(ref _protocolViolations);
            return;
        }

        if (operation != shadow!.Operation && operation != shadow.DataOperation)
        {
            Interlocked.Increment(ref _protocolViolations);
        }

        Complete(shadow, status);
    }

    private void Complete(RequestShadow shadow, short status)
    {
        if (shadow.DataOperation == BlkifOperation.Read && status == BlkifStatus.Okay && !shadow.ReadDestination.IsEmpty)
        {
            Span<byte> destination = shadow.ReadDestination.Span;
            for (int i = 0; i < shadow.OwnedPageCount; i++)
            {
                int offset = i * XenPage.Size;
                int chunk = Math.Min(XenPage.Size, destination.Length - offset);
                shadow.Pages[i].Page.Span[..chunk].CopyTo(destination.Slice(offset, chunk));
            }
        }

        for (int i = 0; i < shadow.OwnedPageCount; i++)
        {
            Release(shadow.Pages[i], shadow.PagePooled[i]);
        }

        for (int i = 0; i < shadow.IndirectCount; i++)
        {
            Release(shadow.IndirectPages[i], shadow.IndirectPooled[i]);
        }

        IRequestCompletion? completion = shadow.Completion;
        int token = shadow.Token;
        lock (_submitLock)
        {
            shadow.InUse = false;
            shadow.Completion = null;
            shadow.ReadDestination = default;
            shadow.Generation++;
            _freeShadows[_freeCount++] = shadow.Index;
            _outstanding--;
        }

        _slots.Release();
        completion?.OnCompleted(token, status);
    }

    private void Release(GrantedPage page, bool pooled)
    {
        if (pooled)
        {
            _pool.Return(page);
        }
        else if (_guest.EndAccess(page.GrantRef))
        {
            _guest.FreePage(page.Page);
        }
        else
        {
            // The backend still has the page mapped after answering: a leak on its side. The page
            // stays granted (and is never reused), as blkfront would have to leave it.
            Interlocked.Increment(ref _grantEndFailures);
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
