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
/// The type is split by concern, as the backend's BlkifRing is: this file sets the ring up and tears
/// it down; .Requests builds and pushes requests, .Responses consumes responses on the completion
/// thread, .Pages grants and releases data pages, .RawAccess writes slots and indices as tests ask.
/// </summary>
internal sealed partial class FrontendRing
{
    private readonly SimulatedDomain _guest;
    private readonly uint _backendId;
    private readonly ushort _handle;
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
    private uint _requestProducerPrivate;
    private volatile bool _stopping;
    private volatile bool _halted;
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

    public int Notify()
    {
        Interlocked.Increment(ref _notificationsSent);
        return _events.Notify(_port);
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

    private unsafe byte* SlotAddress(uint index) =>
        (byte*)_ringPages.Address + SharedRingHeader.Size + ((index & (uint)(Entries - 1)) * (uint)_slotSize);
}
