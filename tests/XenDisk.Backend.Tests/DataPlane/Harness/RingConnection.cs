using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;
using XenDisk.Abi;
using XenDisk.Backend.DataPlane;
using XenDisk.Storage;
using XenDisk.Xen.Simulated;
using XenDisk.Xen.Simulated.EventChannels;
using XenDisk.Xen.Simulated.Grants;

namespace XenDisk.Backend.Tests.DataPlane.Harness;

/// <summary>
/// One blkif ring built by hand over the simulated hypervisor: the guest allocates and grants the
/// ring pages and binds an unbound port, dom0 maps the ring and binds to the port, and a
/// <see cref="BlkifRing"/> serves it. The test plays blkfront: it writes raw slots, publishes
/// req_prod the way ring.h's RING_PUSH_REQUESTS_AND_CHECK_NOTIFY does, and reads responses.
/// Ownership: disposing stops the ring, unmaps the ring and unbinds both ports; the disk is the test's.
/// </summary>
public sealed class RingConnection : IAsyncDisposable
{
    /// <summary>Bounds every wait for the backend so that a broken backend fails a test instead of hanging it.</summary>
    public static readonly TimeSpan HangGuard = TimeSpan.FromSeconds(20);

    private readonly SimulatedGrantTable _backendGrants;
    private readonly SimulatedEventChannels _backendEvents;
    private readonly GuestPageRange _ringPages;
    private readonly uint[] _ringRefs;
    private readonly nint _backendRingAddress;
    private uint _requestProducerPrivate;
    private uint _responseConsumer;
    private int _stoppedUnexpectedly;
    private bool _disposed;

    public RingConnection(SimulatedHypervisor hypervisor, SimulatedDomain guest, IBlockDevice disk, BlkifProtocol protocol = BlkifProtocol.X86_64,
        int ringPages = 1, NegotiatedFeatures? features = null, DataPlaneOptions? options = null, string name = "vbd/1/51712 queue 0",
        string? inflightRecordPath = null)
    {
        Hypervisor = hypervisor;
        Guest = guest;
        Protocol = protocol;
        SlotSize = RingGeometry.SlotSize(protocol);
        Entries = RingGeometry.EntryCountForPages(protocol, ringPages);

        // SHARED_RING_INIT, with every slot filled with a marker so that any byte the backend leaves
        // unwritten in a response shows up.
        _ringPages = guest.AllocatePages(ringPages);
        Span<byte> ring = _ringPages.Span;
        ring.Fill(0xAA);
        ring[..SharedRingHeader.Size].Clear();
        WriteHeader(SharedRingHeader.RequestEventOffset, 1);
        WriteHeader(SharedRingHeader.ResponseEventOffset, 1);

        _ringRefs = new uint[ringPages];
        for (int i = 0; i < ringPages; i++)
        {
            _ringRefs[i] = guest.GrantAccess(0, _ringPages[i], readOnly: false);
        }

        GuestEvents = hypervisor.OpenEventChannels(guest);
        GuestPort = GuestEvents.BindUnboundPort(0);

        _backendGrants = hypervisor.OpenGrantTable(hypervisor.Dom0);
        _backendEvents = hypervisor.OpenEventChannels(hypervisor.Dom0);
        int rc = _backendGrants.MapGrantRefs(guest.Id, _ringRefs, writable: true, out _backendRingAddress);
        if (rc != 0)
        {
            throw new InvalidOperationException($"mapping the ring failed: {rc}");
        }

        uint localPort = _backendEvents.BindInterdomain(guest.Id, GuestPort);
        BackendPort = localPort;
        Logger = new ListLogger();
        Setup = new RingSetup
        {
            Name = name,
            FrontendDomainId = guest.Id,
            QueueIndex = 0,
            Protocol = protocol,
            SharedRing = _backendRingAddress,
            RingPageCount = ringPages,
            Grants = _backendGrants,
            EventChannels = _backendEvents,
            LocalPort = localPort,
            Disk = disk,
            Features = features ?? new NegotiatedFeatures { MaxIndirectSegments = 256, Discard = true },
            Options = options ?? new DataPlaneOptions(),
            InflightRecordPath = inflightRecordPath,
            InflightIdentity = $"{guest.Id}/51712/0 refs {string.Join(',', _ringRefs)} port {GuestPort} {protocol}",
        };
        Ring = new BlkifRing(Setup, Logger);
        Ring.StoppedUnexpectedly += r => Interlocked.Increment(ref _stoppedUnexpectedly);
    }

    public SimulatedHypervisor Hypervisor { get; }

    public SimulatedDomain Guest { get; }

    public BlkifProtocol Protocol { get; }

    public int SlotSize { get; }

    public int Entries { get; }

    public RingSetup Setup { get; }

    public BlkifRing Ring { get; private set; }

    /// <summary>
    /// A new backend instance on the same ring, event channel and disk, as a restarted service attaches
    /// after the previous ring thread ended (killed or stopped); started at once.
    /// </summary>
    public BlkifRing RestartRing()
    {
        Ring = new BlkifRing(Setup, Logger);
        Ring.StoppedUnexpectedly += r => Interlocked.Increment(ref _stoppedUnexpectedly);
        Ring.Start();
        return Ring;
    }

    public ListLogger Logger { get; }

    public SimulatedEventChannels GuestEvents { get; }

    public uint GuestPort { get; }

    /// <summary>The port dom0 bound for the ring: where the guest's kicks arrive.</summary>
    public uint BackendPort { get; }

    /// <summary>
    /// Takes a kick still pending on <see cref="BackendPort"/> (unmasking first, as the ring does after
    /// each delivery); -1 when none is. A stopped ring leaves later kicks here, unconsumed.
    /// </summary>
    public int TakePendingBackendKick()
    {
        _ = _backendEvents.Unmask(BackendPort);
        return _backendEvents.WaitPending(0);
    }

    public int StoppedUnexpectedlyCount => Volatile.Read(ref _stoppedUnexpectedly);

    public RingStatistics Statistics => Ring.Statistics;

    /// <summary>The backend's grant handle: <see cref="SimulatedGrantTable.MappedPages"/> counts what it holds (the ring included).</summary>
    public SimulatedGrantTable BackendGrants => _backendGrants;

    /// <summary>Pages the backend has mapped besides the ring itself.</summary>
    public int DataPagesMapped => _backendGrants.MappedPages - _ringRefs.Length;

    /// <summary>The guest's view of the shared ring.</summary>
    public Span<byte> RingMemory => _ringPages.Span;

    public uint RequestProducer => ReadHeader(SharedRingHeader.RequestProducerOffset);

    public uint ResponseProducer => ReadHeader(SharedRingHeader.ResponseProducerOffset);

    public uint RequestEvent => ReadHeader(SharedRingHeader.RequestEventOffset);

    public uint ResponseConsumer => _responseConsumer;

    public RingConnection Start()
    {
        Ring.Start();
        return this;
    }

    public Span<byte> SlotAt(uint index) => RingMemory.Slice(SharedRingHeader.Size + (int)(index % (uint)Entries * (uint)SlotSize), SlotSize);

    /// <summary>Writes a request into the next free slot (not yet visible to the backend).</summary>
    public void Queue(byte[] slot)
    {
        if (slot.Length != SlotSize)
        {
            throw new ArgumentException("slot of the wrong size for this protocol");
        }

        slot.CopyTo(SlotAt(_requestProducerPrivate));
        _requestProducerPrivate++;
    }

    /// <summary>RING_PUSH_REQUESTS_AND_CHECK_NOTIFY: publish req_prod, then notify only if the backend asked (req_event). Returns whether it notified.</summary>
    public bool Publish()
    {
        uint old = RequestProducer;
        uint published = _requestProducerPrivate;
        WriteHeader(SharedRingHeader.RequestProducerOffset, published);
        Interlocked.MemoryBarrier();
        if (published - RequestEvent < published - old)
        {
            Notify();
            return true;
        }

        return false;
    }

    /// <summary>Publishes a raw req_prod, however wrong (for protocol-violation tests).</summary>
    public void PublishRawRequestProducer(uint value)
    {
        WriteHeader(SharedRingHeader.RequestProducerOffset, value);
        Notify();
    }

    public void Notify() => GuestEvents.Notify(GuestPort);

    public void SetResponseEvent(uint value) => WriteHeader(SharedRingHeader.ResponseEventOffset, value);

    /// <summary>Queues, publishes and waits for the responses of <paramref name="slots"/>, in completion order.</summary>
    public WireSlots.Response[] Submit(params byte[][] slots)
    {
        foreach (byte[] slot in slots)
        {
            Queue(slot);
        }

        Publish();
        return WaitForResponses(slots.Length);
    }

    public WireSlots.Response SubmitOne(byte[] slot) => Submit(slot)[0];

    /// <summary>
    /// Waits the way blkfront does (RING_FINAL_CHECK_FOR_RESPONSES: rsp_event = rsp_cons + 1, then
    /// look again) until <paramref name="count"/> responses are there, and consumes them.
    /// </summary>
    public WireSlots.Response[] WaitForResponses(int count)
    {
        DateTime deadline = DateTime.UtcNow + HangGuard;
        while (ResponseProducer - _responseConsumer < (uint)count)
        {
            SetResponseEvent(_responseConsumer + 1);
            Interlocked.MemoryBarrier();
            if (ResponseProducer - _responseConsumer >= (uint)count)
            {
                break;
            }

            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"the backend answered {ResponseProducer - _responseConsumer} of {count} requests (fault: {Ring.Fault}, halted: {Ring.IsHalted})");
            }

            int port = GuestEvents.WaitPending(100);
            if (port >= 0)
            {
                GuestEvents.Unmask((uint)port);
            }
        }

        var responses = new WireSlots.Response[count];
        for (int i = 0; i < count; i++)
        {
            responses[i] = WireSlots.ReadResponse(SlotAt(_responseConsumer++));
        }

        return responses;
    }

    /// <summary>Spins (without allocating) until <paramref name="count"/> more responses are published, then skips them.</summary>
    public void SkipResponses(int count)
    {
        uint target = _responseConsumer + (uint)count;
        long deadline = Environment.TickCount64 + (long)HangGuard.TotalMilliseconds;
        while (ResponseProducer != target)
        {
            if (Environment.TickCount64 > deadline)
            {
                throw new TimeoutException("the backend stopped answering");
            }

            Thread.Yield();
        }

        _responseConsumer = target;
    }

    /// <summary>Waits until <paramref name="condition"/> holds (state another thread changes); fails after <see cref="HangGuard"/>.</summary>
    public static void WaitUntil(Func<bool> condition, string what)
    {
        DateTime deadline = DateTime.UtcNow + HangGuard;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException("timed out waiting for " + what);
            }

            Thread.Sleep(1);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        await Ring.StopAsync();
        _backendGrants.Unmap(_backendRingAddress, _ringRefs.Length);
        _backendEvents.Dispose();
        GuestEvents.Dispose();
        foreach (uint grantRef in _ringRefs)
        {
            Guest.EndAccess(grantRef);
        }

        Guest.FreePages(_ringPages);
        _backendGrants.Dispose();
    }

    private unsafe uint ReadHeader(int offset) => Volatile.Read(ref Unsafe.AsRef<uint>((void*)(_ringPages.Address + offset)));

    private unsafe void WriteHeader(int offset, uint value) => Volatile.Write(ref Unsafe.AsRef<uint>((void*)(_ringPages.Address + offset)), value);
}

/// <summary>Collects log entries so that tests can check lifecycle lines (and that there is only one of each).</summary>
public sealed class ListLogger : ILogger
{
    private readonly List<(EventId Id, LogLevel Level, string Message, Exception? Exception)> _entries = [];

    public IReadOnlyList<(EventId Id, LogLevel Level, string Message, Exception? Exception)> Entries
    {
        get
        {
            lock (_entries)
            {
                return [.. _entries];
            }
        }
    }

    public int Count(int eventId) => Entries.Count(e => e.Id.Id == eventId);

    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        lock (_entries)
        {
            _entries.Add((eventId, logLevel, formatter(state, exception), exception));
        }
    }
}
