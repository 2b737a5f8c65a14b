using System.Runtime.InteropServices;
using XenDisk.Abi;
using XenDisk.Storage;
using XenDisk.Xen;

namespace XenDisk.Backend.DataPlane;

// The ring protocol of xen/include/public/io/ring.h, back-end side: consuming requests, producing
// responses, and the event-index handshakes that decide who notifies whom.
public sealed partial class BlkifRing
{
    private SharedRingView _ring;
    private RequestContext[] _contexts = [];
    private int[] _freeContexts = [];
    private int _freeContextCount;
    private PersistentGrantCache? _persistent;
    private BounceBufferPool? _bounce;

    // Grant copy: reads finished in this reap whose data goes to the guests in one copy (QueueCopyOut).
    private int[] _copyOut = [];
    private int _copyOutCount;
    private GrantCopySegment[] _copyOutSegments = [];
    private int _copyOutSegmentCount;
    private IoWorkerPool? _workers;
    private PublicationGroup? _publications;
    private int _maxSegments;
    private int _maxIndirectSegments;
    private long _persistentExpiryTicks;

    // Private ring indices (ring.h: req_cons and rsp_prod_pvt of the back ring) and the rsp_prod last published.
    private uint _requestConsumer;
    private uint _responseProducerPrivate;
    private uint _responseProducerPublished;

    // Completed contexts handed back by I/O threads; _completionBatch is the ring thread's private copy.
    private readonly Lock _completionLock = new();
    private int[] _completionQueue = [];
    private int _completionHead;
    private int _completionCount;
    private int[] _completionBatch = [];
    private Exception? _workerFailure;

    /// <summary>Allocates everything the ring will ever need, sized by the ring and the negotiated features.</summary>
    private void Initialize()
    {
        DataPlaneOptions options = Setup.Options;
        int entries = RingGeometry.EntryCountForPages(Setup.Protocol, Setup.RingPageCount);
        _ring = new SharedRingView(Setup.SharedRing, entries, RingGeometry.SlotSize(Setup.Protocol));

        _maxIndirectSegments = Math.Clamp(Setup.Features.MaxIndirectSegments, 0, BlkifLimits.MaxIndirectSegments);
        _maxSegments = Math.Max(BlkifLimits.MaxSegmentsPerRequest, _maxIndirectSegments);
        bool grantCopy = options.DataPath == DataPath.GrantCopy;

        // Persistent grants keep guest pages mapped, which the grant-copy path exists to avoid.
        bool persistent = !grantCopy && Setup.Features.PersistentGrants && options.PersistentGrantCacheSize > 0;
        if (persistent)
        {
            _persistent = new PersistentGrantCache(Setup.Grants, Setup.FrontendDomainId, options.PersistentGrantCacheSize, Statistics);
            _persistentExpiryTicks = (long)(options.PersistentGrantIdleExpiry.TotalSeconds * options.TimeProvider.TimestampFrequency);
        }

        if (grantCopy)
        {
            _bounce = new BounceBufferPool(options.BounceBufferPagesFor(entries, _maxSegments));
            _copyOut = new int[entries];
            _copyOutSegments = new GrantCopySegment[_bounce.PageCount];
        }

        _contexts = new RequestContext[entries];
        _freeContexts = new int[entries];
        for (int i = 0; i < entries; i++)
        {
            _contexts[i] = new RequestContext(i, _maxSegments, grantCopy, persistent);
            _freeContexts[i] = entries - 1 - i;
        }

        _freeContextCount = entries;
        _completionQueue = new int[entries];
        _completionBatch = new int[entries];

        InitializeEngine(entries);
        if (!Setup.Disk.CompletesInline)
        {
            if (Setup.Disk is IGroupCommitDevice groupCommit)
            {
                _publications = new PublicationGroup(groupCommit, entries, OnPublished);
            }

            _workers = new IoWorkerPool("blkif-io " + Setup.Name, options.IoThreadsPerRing, entries, RunOnIoThread);
        }

        // BACK_RING_ATTACH: pick up where a previous connection left the ring (zero on a fresh ring).
        uint responseProducer = _ring.ReadResponseProducer();
        _requestConsumer = responseProducer;
        _responseProducerPrivate = responseProducer;
        _responseProducerPublished = responseProducer;
        OpenInflightRecord();
    }

    private void RunLoop()
    {
        while (true)
        {
            RefreshNow();
            ReapEngine();
            ProcessCompletions();
            ThrowIfWorkerFailed();

            if (_stopRequested)
            {
                if (_inFlightIo == 0 && _blocked is null)
                {
                    return;
                }
            }
            else if (!_halted && CanTakeRequests && TakeRecoveredRequests())
            {
                TakeRequests();
            }

            Statistics.SetInFlight((int)(_requestConsumer - _responseProducerPrivate));
            PushResponses();

            if (!_stopRequested && !_halted && CanTakeRequests)
            {
                // A full batch, or a frontend still producing: hand this batch to the kernel and go
                // round again.
                if (_ring.ReadRequestProducer() != _requestConsumer || FinalCheckForRequests())
                {
                    SubmitQueued();
                    FlushPolled();
                    continue;
                }

                // The ring is drained: only now allow the next event (late EOI), so that a frontend
                // kicking us while we work costs no wake-ups. An event raised while the port was
                // masked stays pending and is delivered by the next wait.
                if (_portMasked)
                {
                    UnmaskPort();
                    _portMasked = false;
                }
            }

            if (HasCompletions || EngineHasCompletions || FlushPolled())
            {
                SubmitQueued();
                continue;
            }

            // One system call: submits what this iteration queued and sleeps until a guest kick, a
            // storage completion or a wake-up (stop, slow-path completion).
            WaitForWork(NextWaitMilliseconds());
        }
    }

    /// <summary>Requests are taken unless one already taken waits for in-flight I/O (a drain) or for buffers,
    /// or a barrier or flush is running: those are ordering points.</summary>
    private bool CanTakeRequests => _blocked is null && !_exclusiveInFlight;

    private void TakeRequests()
    {
        uint producer = _ring.ReadRequestProducer();

        // A frontend can never have more requests outstanding than the ring has slots: the slots
        // between rsp_prod_pvt and req_prod are its requests we have not answered. More than that
        // means req_prod is garbage (ring.h RING_REQUEST_PROD_OVERFLOW); consuming it would make us
        // read slots it is still writing and run past our preallocated contexts.
        if (producer - _responseProducerPrivate > (uint)_ring.Entries)
        {
            Halt(producer);
            return;
        }

        int maxBatch = Setup.Options.MaxBatch;
        int taken = 0;
        Span<byte> slot = stackalloc byte[_ring.SlotSize];
        while (_requestConsumer != producer && taken < maxBatch && CanTakeRequests)
        {
            RequestContext context = _contexts[_freeContexts[--_freeContextCount]];

            // The one read of this slot: everything after works on the private copy.
            _ring.Slot(_requestConsumer).CopyTo(slot);
            _inflight?.Consumed(context.Index, slot, _requestConsumer);
            _killPoint?.Invoke("consumed");
            _requestConsumer++;
            taken++;
            HandleRequest(context, slot);
        }

        if (taken > 0)
        {
            Statistics.RecordBatch(taken);
        }
    }

    /// <summary>
    /// RING_FINAL_CHECK_FOR_REQUESTS. The frontend notifies only when the req_event we published lies in
    /// the range of requests it just pushed. Going to sleep after merely seeing the ring empty loses
    /// a request pushed in between: the frontend read a stale req_event and did not notify. So we first
    /// ask to be told about the next request (req_event = req_cons + 1), then look again. The full barrier
    /// orders our req_event store before our req_prod load; the frontend orders its req_prod store before
    /// its req_event load; so either we see its request now or it sees our req_event and notifies.
    /// </summary>
    private bool FinalCheckForRequests()
    {
        _ring.WriteRequestEvent(_requestConsumer + 1);
        Interlocked.MemoryBarrier();
        return _ring.ReadRequestProducer() != _requestConsumer;
    }

    /// <summary>
    /// RING_PUSH_RESPONSES_AND_CHECK_NOTIFY: publish rsp_prod (release: the responses are written
    /// before the index), then a full barrier so that our rsp_prod store is ordered before the rsp_event
    /// load, then notify only if rsp_event falls among the responses just published, which is how the
    /// frontend says it is waiting. The pairing barrier on its side makes a missed wake-up impossible.
    /// </summary>
    private void PushResponses()
    {
        uint old = _responseProducerPublished;
        uint published = _responseProducerPrivate;
        if (old == published)
        {
            return;
        }

        _killPoint?.Invoke("before publish");
        _ring.PublishResponseProducer(published);
        _responseProducerPublished = published;
        _killPoint?.Invoke("published");
        Interlocked.MemoryBarrier();
        uint responseEvent = _ring.ReadResponseEvent();
        if (published - responseEvent < published - old)
        {
            Setup.EventChannels.Notify(Setup.LocalPort);
            Statistics.NotificationSent();
        }
        else
        {
            Statistics.NotificationSuppressed();
        }
    }

    /// <summary>
    /// Writes one response into the next response slot. Every byte of the slot is written (the padding
    /// of struct blkif_response and the rest of the union with zeros), so nothing from an earlier request
    /// or from our memory can be read back by the guest.
    /// </summary>
    private void WriteResponse(RequestContext context, ulong id, byte operation, short status)
    {
        Span<byte> slot = _ring.Slot(_responseProducerPrivate);
        slot.Clear();
        MemoryMarshal.Write(slot, in id);
        slot[8] = operation;
        MemoryMarshal.Write(slot[10..], in status);
        _killPoint?.Invoke("response written");
        _inflight?.Answered(context.Index, _responseProducerPrivate);
        _responseProducerPrivate++;
    }

    private void Halt(uint producer)
    {
        _halted = true;
        Statistics.SetHalted();
        DataPlaneLog.RingHalted(_logger, Setup.Name, producer, _responseProducerPrivate, _ring.Entries);
        RaiseStoppedUnexpectedly();
    }

    private bool HasCompletions => Volatile.Read(ref _completionCount) != 0;

    /// <summary>Called by I/O threads: queue the finished context for the ring thread and wake it.</summary>
    private void PostCompletion(int context) => PostCompletions(new ReadOnlySpan<int>(in context));

    private void PostCompletions(ReadOnlySpan<int> contexts)
    {
        bool wasEmpty;
        lock (_completionLock)
        {
            wasEmpty = _completionCount == 0;
            foreach (int context in contexts)
            {
                _completionQueue[(_completionHead + _completionCount) % _completionQueue.Length] = context;
                _completionCount++;
            }
        }

        // The ring thread empties the whole queue on each wake-up, so only the first completion of a
        // burst needs to wake it.
        if (wasEmpty)
        {
            _waker!.Signal();
        }
    }

    private void ProcessCompletions()
    {
        // Most iterations have no slow-path completion: skip the lock. One posted after this read
        // signals the waker (PostCompletion), which ends the next wait at once, so none is missed.
        if (!HasCompletions)
        {
            return;
        }

        int count;
        lock (_completionLock)
        {
            count = _completionCount;
            for (int i = 0; i < count; i++)
            {
                _completionBatch[i] = _completionQueue[(_completionHead + i) % _completionQueue.Length];
            }

            _completionHead = (_completionHead + count) % _completionQueue.Length;
            _completionCount = 0;
        }

        for (int i = 0; i < count; i++)
        {
            Complete(_contexts[_completionBatch[i]]);
        }
    }

    /// <summary>
    /// How long to sleep: until the oldest idle persistent grant expires, or until an event. Expires what
    /// is due first. Waking for slow-path completions and stop requests relies on the ring's
    /// <see cref="RingWaker"/> being sticky (an eventfd signalled while the thread is not waiting stays
    /// readable and ends its next wait at once): so no wake-up is ever lost and no periodic wake-up is
    /// needed to paper over one.
    /// </summary>
    private int NextWaitMilliseconds()
    {
        if (_persistent is null)
        {
            return Timeout.Infinite;
        }

        TimeProvider time = Setup.Options.TimeProvider;
        long now = _now;
        _persistent.ExpireIdle(now - _persistentExpiryTicks);
        if (_persistent.OldestIdleTimestamp is not long lastUsed)
        {
            return Timeout.Infinite;
        }

        long dueTicks = lastUsed + _persistentExpiryTicks - now;
        long dueMilliseconds = (dueTicks * 1000 / time.TimestampFrequency) + 1;
        return (int)Math.Clamp(dueMilliseconds, 1, int.MaxValue);
    }
}
