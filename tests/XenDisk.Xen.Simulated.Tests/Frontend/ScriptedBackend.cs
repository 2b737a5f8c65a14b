using System.Globalization;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using XenDisk.Abi;
using XenDisk.Xen;
using XenDisk.Xen.Simulated;

namespace XenDisk.Xen.Simulated.Tests.Frontend;

/// <summary>
/// A deliberately small blkback written for these tests: it plays the backend half of the
/// XenbusState handshake, records what the frontend published, maps the rings, and serves
/// requests from an in-memory disk through grant copy. Its faults are switchable so that the
/// frontend's checks can be seen to fire.
/// </summary>
internal sealed class ScriptedBackend : IAsyncDisposable
{
    private static readonly XenStoreTransaction None = XenStoreTransaction.None;
    private readonly SimulatedHypervisor _hypervisor;
    private readonly DiskAttachment _disk;
    private readonly IXenStore _store;
    private readonly IGrantTable _grants;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _control;
    private readonly unsafe byte* _data;
    private readonly List<ServedRing> _rings = [];
    private readonly Lock _lock = new();

    public unsafe ScriptedBackend(SimulatedHypervisor hypervisor, DiskAttachment disk, IReadOnlyDictionary<string, string> features, long diskBytes = 4 << 20)
    {
        _hypervisor = hypervisor;
        _disk = disk;
        DiskBytes = diskBytes;
        _data = (byte*)NativeMemory.AllocZeroed((nuint)diskBytes);
        _store = hypervisor.Platform(hypervisor.Dom0).OpenXenStore();
        _grants = hypervisor.Platform(hypervisor.Dom0).OpenGrantTable();
        Features = features;
        _store.Watch(disk.FrontendPath + "/state", "frontend");
        PublishInitWait();
        _control = Task.Run(() => ControlLoopAsync(_stop.Token));
    }

    public IReadOnlyDictionary<string, string> Features { get; }

    public long DiskBytes { get; }

    /// <summary>Every key of the frontend directory when it reached Initialised (relative paths).</summary>
    public Dictionary<string, string> FrontendKeys { get; private set; } = [];

    public bool RingHeadersWereFresh { get; private set; } = true;

    public int Connections { get; private set; }

    public string? Failure { get; private set; }

    /// <summary>Map each data page (and forget to unmap it) instead of copying: a leaking backend.</summary>
    public bool LeakDataMappings { get; set; }

    /// <summary>Answer writes with OKAY without storing them: a disk that loses writes.</summary>
    public bool DropWrites { get; set; }

    /// <summary>Answer every request twice: the second answer's id is no longer outstanding.</summary>
    public bool DuplicateResponses { get; set; }

    public unsafe Span<byte> Data => new(_data, (int)DiskBytes);

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        try
        {
            await _control;
        }
        catch (OperationCanceledException)
        {
        }

        Disconnect();
        _store.Dispose();
        _grants.Dispose();
        FreeData();
    }

    private unsafe void FreeData() => NativeMemory.Free(_data);

    private void PublishInitWait()
    {
        foreach ((string key, string value) in Features)
        {
            _store.Write(None, _disk.BackendPath + "/" + key, value);
        }

        SetState(XenbusState.InitWait);
    }

    private async Task ControlLoopAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            await _store.ReadWatchAsync(cancellationToken);
            try
            {
                string? text = _store.Read(None, _disk.FrontendPath + "/state");
                if (!XenbusStateText.TryParse(text, out XenbusState frontend))
                {
                    continue;
                }

                XenbusState backend = ReadState();
                switch (frontend)
                {
                    case XenbusState.Initialised when backend == XenbusState.InitWait:
                        Connect();
                        break;
                    case XenbusState.Closing when backend != XenbusState.Closing:
                        Disconnect();
                        SetState(XenbusState.Closing);
                        break;
                    case XenbusState.Closed when backend != XenbusState.Closed:
                        Disconnect();
                        SetState(XenbusState.Closed);
                        break;
                    case XenbusState.Initialising when backend == XenbusState.Closed:
                        SetState(XenbusState.InitWait);
                        break;
                }
            }
            catch (Exception e) when (e is XenException or InvalidOperationException or FormatException)
            {
                Failure = e.Message;
            }
        }
    }

    private unsafe void Connect()
    {
        FrontendKeys = [];
        CollectKeys(_disk.FrontendPath, string.Empty);
        BlkifProtocolNames.TryParse(FrontendKeys.GetValueOrDefault("protocol"), out BlkifProtocol protocol);
        int queues = FrontendKeys.TryGetValue("multi-queue-num-queues", out string? q) ? int.Parse(q, CultureInfo.InvariantCulture) : 1;
        int pages = FrontendKeys.TryGetValue("ring-page-order", out string? order) ? 1 << int.Parse(order, CultureInfo.InvariantCulture)
            : FrontendKeys.TryGetValue("num-ring-pages", out string? count) ? int.Parse(count, CultureInfo.InvariantCulture) : 1;
        for (int i = 0; i < queues; i++)
        {
            string prefix = queues == 1 ? string.Empty : $"queue-{i}/";
            uint[] refs = new uint[pages];
            for (int p = 0; p < pages; p++)
            {
                string key = pages == 1 ? prefix + "ring-ref" : prefix + "ring-ref" + p.ToString(CultureInfo.InvariantCulture);
                refs[p] = uint.Parse(FrontendKeys[key], CultureInfo.InvariantCulture);
            }

            uint port = uint.Parse(FrontendKeys[prefix + "event-channel"], CultureInfo.InvariantCulture);
            int rc = _grants.MapGrantRefs(_disk.Guest.Id, refs, writable: true, out nint ring);
            if (rc != 0)
            {
                throw new InvalidOperationException($"mapping ring {i} failed: {rc}");
            }

            var header = (SharedRingHeader*)ring;
            RingHeadersWereFresh &= header->RequestProducer == 0 && header->ResponseProducer == 0 && header->RequestEvent == 1 && header->ResponseEvent == 1;
            IEventChannels events = _hypervisor.Platform(_hypervisor.Dom0).OpenEventChannels();
            uint localPort = events.BindInterdomain(_disk.Guest.Id, port);
            var served = new ServedRing(this, ring, pages, protocol, events, localPort);
            lock (_lock)
            {
                _rings.Add(served);
            }

            served.Start();
        }

        _store.Write(None, _disk.BackendPath + "/sectors", (DiskBytes / 512).ToString(CultureInfo.InvariantCulture));
        _store.Write(None, _disk.BackendPath + "/sector-size", "512");
        _store.Write(None, _disk.BackendPath + "/info", "0");
        Connections++;
        SetState(XenbusState.Connected);
    }

    private void Disconnect()
    {
        List<ServedRing> rings;
        lock (_lock)
        {
            rings = [.. _rings];
            _rings.Clear();
        }

        foreach (ServedRing ring in rings)
        {
            ring.Stop();
            _grants.Unmap(ring.Address, ring.Pages);
        }
    }

    private void CollectKeys(string directory, string prefix)
    {
        foreach (string child in _store.Directory(None, directory) ?? [])
        {
            string path = directory + "/" + child;
            string value = _store.Read(None, path) ?? string.Empty;
            FrontendKeys[prefix + child] = value;
            CollectKeys(path, prefix + child + "/");
        }
    }

    private XenbusState ReadState() =>
        XenbusStateText.TryParse(_store.Read(None, _disk.BackendPath + "/state"), out XenbusState state) ? state : XenbusState.Unknown;

    private void SetState(XenbusState state) => _store.Write(None, _disk.BackendPath + "/state", XenbusStateText.ToWire(state));

    /// <summary>One ring served by one thread, blkback-style: copy each request out once, answer, final-check.</summary>
    private sealed unsafe class ServedRing
    {
        private readonly ScriptedBackend _backend;
        private readonly BlkifProtocol _protocol;
        private readonly IEventChannels _events;
        private readonly uint _port;
        private readonly int _entries;
        private readonly int _slotSize;
        private readonly Thread _thread;
        private volatile bool _stopping;
        private uint _requestConsumer;
        private uint _responseProducerPrivate;

        public ServedRing(ScriptedBackend backend, nint address, int pages, BlkifProtocol protocol, IEventChannels events, uint port)
        {
            _backend = backend;
            Address = address;
            Pages = pages;
            _protocol = protocol;
            _events = events;
            _port = port;
            _entries = RingGeometry.EntryCountForPages(protocol, pages);
            _slotSize = RingGeometry.SlotSize(protocol);
            _thread = new Thread(Serve) { IsBackground = true };
        }

        public nint Address { get; }

        public int Pages { get; }

        private SharedRingHeader* Header => (SharedRingHeader*)Address;

        public void Start() => _thread.Start();

        public void Stop()
        {
            _stopping = true;
            _events.Interrupt();
            _thread.Join();
            _events.Dispose();
        }

        private void Serve()
        {
            while (!_stopping)
            {
                int port = _events.WaitPending(-1);
                if (port < 0)
                {
                    continue;
                }

                while (true)
                {
                    uint producer = Volatile.Read(ref Header->RequestProducer);
                    while (_requestConsumer != producer)
                    {
                        Handle(_requestConsumer++);
                    }

                    PushResponses();
                    Volatile.Write(ref Header->RequestEvent, _requestConsumer + 1);
                    Interlocked.MemoryBarrier();
                    if (Volatile.Read(ref Header->RequestProducer) == _requestConsumer)
                    {
                        break;
                    }
                }

                _events.Unmask((uint)port);
            }
        }

        private byte* Slot(uint index) => (byte*)Address + SharedRingHeader.Size + ((index & (uint)(_entries - 1)) * (uint)_slotSize);

        private void Handle(uint index)
        {
            byte* slot = Slot(index);
            byte operation = *slot;
            ulong id;
            short status;
            byte answeredOperation = operation;
            if (operation == BlkifOperation.Indirect)
            {
                BlkifRequestIndirect64 request = _protocol == BlkifProtocol.X86_32 ? Widen(Unsafe.ReadUnaligned<BlkifRequestIndirect32>(slot)) : Unsafe.ReadUnaligned<BlkifRequestIndirect64>(slot);
                id = request.Id;
                answeredOperation = request.IndirectOperation;
                status = Indirect(request);
            }
            else if (operation == BlkifOperation.Discard)
            {
                BlkifRequestDiscard64 request = _protocol == BlkifProtocol.X86_32 ? Widen(Unsafe.ReadUnaligned<BlkifRequestDiscard32>(slot)) : Unsafe.ReadUnaligned<BlkifRequestDiscard64>(slot);
                id = request.Id;
                long start = (long)request.SectorNumber * 512;
                long length = (long)request.NrSectors * 512;
                status = start + length <= _backend.DiskBytes ? BlkifStatus.Okay : BlkifStatus.Error;
                if (status == BlkifStatus.Okay)
                {
                    new Span<byte>(_backend._data + start, (int)length).Clear();
                }
            }
            else
            {
                BlkifRequest64 request = _protocol == BlkifProtocol.X86_32 ? Widen(Unsafe.ReadUnaligned<BlkifRequest32>(slot)) : Unsafe.ReadUnaligned<BlkifRequest64>(slot);
                id = request.Id;
                status = operation switch
                {
                    BlkifOperation.Read or BlkifOperation.Write or BlkifOperation.WriteBarrier =>
                        Transfer(operation != BlkifOperation.Read, (long)request.SectorNumber, request.Segments[..Math.Min((int)request.NrSegments, BlkifLimits.MaxSegmentsPerRequest)]),
                    BlkifOperation.FlushDiskCache => BlkifStatus.Okay,
                    _ => BlkifStatus.EOpNotSupp,
                };
            }

            Respond(id, answeredOperation, status);
            if (_backend.DuplicateResponses)
            {
                Respond(id, answeredOperation, status);
            }
        }

        private short Indirect(in BlkifRequestIndirect64 request)
        {
            int count = request.NrSegments;
            int pages = (count + BlkifLimits.SegmentsPerIndirectPage - 1) / BlkifLimits.SegmentsPerIndirectPage;
            var segments = new BlkifRequestSegment[count];
            fixed (BlkifRequestSegment* destination = segments)
            {
                for (int p = 0; p < pages; p++)
                {
                    int inPage = Math.Min(BlkifLimits.SegmentsPerIndirectPage, count - (p * BlkifLimits.SegmentsPerIndirectPage));
                    Span<GrantCopySegment> copy = [GrantCopySegment.FromGuest(_backend._disk.Guest.Id, request.IndirectGrantRefs[p], 0, (nint)(destination + (p * BlkifLimits.SegmentsPerIndirectPage)), (ushort)(inPage * BlkifRequestSegment.Size))];
                    _backend._grants.Copy(copy);
                    if (copy[0].Status != GrantStatus.Okay)
                    {
                        return BlkifStatus.Error;
                    }
                }
            }

            return Transfer(request.IndirectOperation == BlkifOperation.Write, (long)request.SectorNumber, segments);
        }

        private short Transfer(bool write, long sector, ReadOnlySpan<BlkifRequestSegment> segments)
        {
            long offset = sector * 512;
            foreach (BlkifRequestSegment segment in segments)
            {
                if (segment.LastSector > 7 || segment.FirstSector > segment.LastSector)
                {
                    return BlkifStatus.Error;
                }

                ushort pageOffset = (ushort)(segment.FirstSector * 512);
                ushort length = (ushort)((segment.LastSector - segment.FirstSector + 1) * 512);
                if (offset + length > _backend.DiskBytes)
                {
                    return BlkifStatus.Error;
                }

                nint local = (nint)(_backend._data + offset);
                if (write && _backend.DropWrites)
                {
                    offset += length;
                    continue;
                }

                if (_backend.LeakDataMappings)
                {
                    // Map and never unmap: exactly the leak the frontend must notice.
                    if (_backend._grants.MapGrantRefs(_backend._disk.Guest.Id, [segment.GrantRef], writable: !write, out nint mapped) != 0)
                    {
                        return BlkifStatus.Error;
                    }

                    var page = new Span<byte>((byte*)mapped + pageOffset, length);
                    var disk = new Span<byte>((byte*)local, length);
                    if (write)
                    {
                        page.CopyTo(disk);
                    }
                    else
                    {
                        disk.CopyTo(page);
                    }
                }
                else
                {
                    Span<GrantCopySegment> copy = [write
                        ? GrantCopySegment.FromGuest(_backend._disk.Guest.Id, segment.GrantRef, pageOffset, local, length)
                        : GrantCopySegment.ToGuest(local, _backend._disk.Guest.Id, segment.GrantRef, pageOffset, length)];
                    _backend._grants.Copy(copy);
                    if (copy[0].Status != GrantStatus.Okay)
                    {
                        return BlkifStatus.Error;
                    }
                }

                offset += length;
            }

            return BlkifStatus.Okay;
        }

        private void Respond(ulong id, byte operation, short status)
        {
            byte* slot = Slot(_responseProducerPrivate++);
            if (_protocol == BlkifProtocol.X86_32)
            {
                Unsafe.WriteUnaligned(slot, new BlkifResponse32 { Id = id, Operation = operation, Status = status });
            }
            else
            {
                Unsafe.WriteUnaligned(slot, new BlkifResponse64 { Id = id, Operation = operation, Status = status });
            }
        }

        private void PushResponses()
        {
            uint old = Header->ResponseProducer;
            uint next = _responseProducerPrivate;
            if (old == next)
            {
                return;
            }

            Volatile.Write(ref Header->ResponseProducer, next);
            Interlocked.MemoryBarrier();
            if (unchecked(next - Volatile.Read(ref Header->ResponseEvent)) < unchecked(next - old))
            {
                _events.Notify(_port);
            }
        }

        private static BlkifRequest64 Widen(in BlkifRequest32 r)
        {
            var wide = new BlkifRequest64 { Operation = r.Operation, NrSegments = r.NrSegments, Handle = r.Handle, Id = r.Id, SectorNumber = r.SectorNumber };
            ((ReadOnlySpan<BlkifRequestSegment>)r.Segments).CopyTo(wide.Segments);
            return wide;
        }

        private static BlkifRequestDiscard64 Widen(in BlkifRequestDiscard32 r) =>
            new() { Operation = r.Operation, Flag = r.Flag, Handle = r.Handle, Id = r.Id, SectorNumber = r.SectorNumber, NrSectors = r.NrSectors };

        private static BlkifRequestIndirect64 Widen(in BlkifRequestIndirect32 r) =>
            new() { Operation = r.Operation, IndirectOperation = r.IndirectOperation, NrSegments = r.NrSegments, Id = r.Id, SectorNumber = r.SectorNumber, Handle = r.Handle, IndirectGrantRefs = r.IndirectGrantRefs };
    }
}
