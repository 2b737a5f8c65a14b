using System.Globalization;
using XenDisk.Abi;
using XenDisk.Xen;
using XenDisk.Xen.Simulated;

namespace XenDisk.TestFrontend;

/// <summary>
/// A blkfront (Linux drivers/block/xen-blkfront.c) for a simulated guest: the XenbusState
/// handshake, one shared ring and event channel per queue, requests split as blkfront splits
/// them, and the checks a careful frontend makes on the backend's answers (every response id must
/// be outstanding; every non-persistent grant must be ended after its response).
/// Lifecycle: <see cref="ConnectAsync"/>, I/O, <see cref="DisconnectAsync"/>, and again
/// <see cref="ConnectAsync"/> if wanted. A backend-initiated close (backend state Closing, as on
/// detach) is followed automatically; its outcome is what <see cref="DisconnectAsync"/> returns.
/// </summary>
public sealed partial class BlockFrontend : IAsyncDisposable
{
    private const string StateWatchToken = "blkfront-backend-state";

    private readonly SimulatedDomain _guest;
    private readonly IXenStore _store;
    private readonly Lock _stateLock = new();
    private readonly CancellationTokenSource _monitorStop = new();
    private readonly Task _monitor;
    private TaskCompletionSource _backendStateChanged = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private XenbusState? _backendState;
    private FrontendRing[] _rings = [];
    private PersistentGrantPool? _pool;
    private NegotiatedFrontendFeatures? _features;
    private Task<FrontendDisconnectResult>? _closing;
    private volatile bool _connected;
    private int _nextQueue;
    private long _retiredProtocolViolations;
    private long _retiredGrantEndFailures;

    public BlockFrontend(SimulatedHypervisor hypervisor, SimulatedDomain guest, DiskAttachment attachment, FrontendOptions? options = null)
        : this(hypervisor, guest, (attachment ?? throw new ArgumentNullException(nameof(attachment))).FrontendPath, options)
    {
    }

    public BlockFrontend(SimulatedHypervisor hypervisor, SimulatedDomain guest, string frontendPath, FrontendOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(hypervisor);
        ArgumentNullException.ThrowIfNull(guest);
        ArgumentException.ThrowIfNullOrEmpty(frontendPath);
        _guest = guest;
        Options = options ?? new FrontendOptions();
        FrontendPath = frontendPath;
        _store = hypervisor.Platform(guest).OpenXenStore();

        // The toolstack wrote where our backend is (libxl: frontend "backend" and "backend-id").
        BackendPath = _store.Read(XenStoreTransaction.None, frontendPath + "/backend")
            ?? throw new InvalidOperationException($"{frontendPath}/backend is missing.");
        BackendDomainId = uint.Parse(_store.Read(XenStoreTransaction.None, frontendPath + "/backend-id") ?? "0", NumberStyles.None, CultureInfo.InvariantCulture);
        string? virtualDevice = _store.Read(XenStoreTransaction.None, frontendPath + "/" + BlkifKeys.VirtualDevice);
        DeviceHandle = ushort.TryParse(virtualDevice, NumberStyles.None, CultureInfo.InvariantCulture, out ushort handle) ? handle : (ushort)0;
        FrontendState = XenbusStateText.TryParse(_store.Read(XenStoreTransaction.None, frontendPath + "/" + BlkifKeys.State), out XenbusState state)
            ? state
            : XenbusState.Unknown;

        _store.Watch(BackendPath + "/" + BlkifKeys.State, StateWatchToken);
        RefreshBackendState();
        _monitor = Task.Run(() => MonitorBackendAsync(_monitorStop.Token));
        Raw = new RawFrontendAccess(this, guest);
    }

    public FrontendOptions Options { get; }

    public string FrontendPath { get; }

    public string BackendPath { get; }

    public uint BackendDomainId { get; }

    /// <summary>The "handle" field of our requests (blkfront uses the virtual-device number).</summary>
    public ushort DeviceHandle { get; }

    public SimulatedDomain Guest => _guest;

    /// <summary>The guest's xenstore connection.</summary>
    public IXenStore XenStore => _store;

    /// <summary>The state this frontend last published.</summary>
    public XenbusState FrontendState { get; private set; }

    /// <summary>The backend's state as last seen through the watch (null: absent or unreadable).</summary>
    public XenbusState? BackendState
    {
        get
        {
            lock (_stateLock)
            {
                return _backendState;
            }
        }
    }

    public bool IsConnected => _connected;

    /// <summary>What was negotiated by the last successful connect.</summary>
    public NegotiatedFrontendFeatures NegotiatedFrontendFeatures =>
        _features ?? throw new InvalidOperationException("The frontend has not connected.");

    /// <summary>Disk size in 512-byte sectors.</summary>
    public ulong Sectors => NegotiatedFrontendFeatures.Sectors;

    public uint SectorSize => NegotiatedFrontendFeatures.SectorSize;

    public VdiskInfo Info => NegotiatedFrontendFeatures.Info;

    public int QueueCount => _rings.Length;

    /// <summary>Responses with an id that was not outstanding, impossible rsp_prod values, or a wrong operation (must stay 0).</summary>
    public long ProtocolViolations => _retiredProtocolViolations + _rings.Sum(r => r.ProtocolViolations);

    /// <summary>Non-persistent grants the backend still had mapped after answering (must stay 0).</summary>
    public long GrantEndFailures => _retiredGrantEndFailures + _rings.Sum(r => r.GrantEndFailures);

    public long NotificationsSent => _rings.Sum(r => r.NotificationsSent);

    /// <summary>Requests in flight on all queues.</summary>
    public int Outstanding => _rings.Sum(r => r.Outstanding);

    /// <summary>Hostile controls for tests: raw ring slots, indices, notifications, grants and xenstore keys.</summary>
    public RawFrontendAccess Raw { get; }

    internal IReadOnlyList<FrontendRing> Rings => _rings;

    internal PersistentGrantPool Pool => _pool ?? throw new InvalidOperationException("The frontend has not connected.");

    /// <summary>
    /// blkfront's talk_to_blkback and blkfront_connect: waits for the backend's InitWait, reads
    /// its offers, sets up rings and event channels, publishes them in one transaction, switches to
    /// Initialised, waits for Connected, reads the disk's description and switches to Connected.
    /// </summary>
    public async Task ConnectAsync(CancellationToken cancellationToken = default)
    {
        if (_connected || _closing is { IsCompleted: false })
        {
            throw new InvalidOperationException("The frontend is connected or closing.");
        }

        if (FrontendState is XenbusState.Closed or XenbusState.Closing)
        {
            // Reconnect: announce a fresh start; the backend answers with InitWait again.
            SwitchState(XenbusState.Initialising);
        }

        _closing = null;
        await WaitForBackendAsync(s => s == XenbusState.InitWait, "InitWait", cancellationToken).ConfigureAwait(false);

        int backendMaxQueues = (int)Math.Max(1, ReadBackendNumber(BlkifKeys.MultiQueueMaxQueues, 1));
        int backendMaxOrder = (int)Math.Min(BlkifLimits.MaxRingPageOrder, ReadBackendNumber(BlkifKeys.MaxRingPageOrder, 0));
        int queues = Options.ForceQueueCount ?? Math.Max(1, Math.Min(Options.Queues, backendMaxQueues));
        int order = Options.ForceRingPageOrder ?? Math.Max(0, Math.Min(Options.RingPageOrder, backendMaxOrder));

        _pool = new PersistentGrantPool(_guest, BackendDomainId);
        var rings = new FrontendRing[queues];
        try
        {
            for (int i = 0; i < queues; i++)
            {
                rings[i] = new FrontendRing(i, _guest, BackendDomainId, DeviceHandle, Options.Protocol, order, _pool);
            }

            PublishRings(rings, order);
            _rings = rings;
            SwitchState(XenbusState.Initialised);
            await WaitForBackendAsync(s => s == XenbusState.Connected, "Connected", cancellationToken).ConfigureAwait(false);

            NegotiatedFrontendFeatures features = ReadBackendDescription(queues, order, rings[0].Entries, backendMaxQueues, backendMaxOrder);
            foreach (FrontendRing ring in rings)
            {
                ring.Activate(features.MaxSegmentsPerRequest, features.PersistentGrants);
            }

            _features = features;
            _connected = true;
            SwitchState(XenbusState.Connected);
        }
        catch
        {
            _rings = rings.Where(r => r is not null).ToArray();
            await CloseAsync(frontendInitiated: true).ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// Closes the device (Closing, then Closed, waiting for the backend to follow each time), then
    /// ends the grants of the ring pages and of persistent pages: the backend must have unmapped
    /// them all by the time it reports Closed. If the backend closed first, returns that outcome.
    /// </summary>
    public Task<FrontendDisconnectResult> DisconnectAsync()
    {
        lock (_stateLock)
        {
            if (_closing is not null)
            {
                return _closing;
            }

            if (!_connected)
            {
                return Task.FromResult(new FrontendDisconnectResult(BackendState is null or XenbusState.Closed, 0, 0, 0));
            }

            _closing = CloseAsync(frontendInitiated: true);
            return _closing;
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (_connected || _closing is not null)
            {
                await DisconnectAsync().ConfigureAwait(false);
            }
        }
        catch (TimeoutException)
        {
            // The backend did not close in time; the report of DisconnectAsync is the place for that.
        }

        Raw.EndGrants();
        await _monitorStop.CancelAsync().ConfigureAwait(false);
        try
        {
            await _monitor.ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }

        _store.Dispose();
        _monitorStop.Dispose();
    }

    internal FrontendRing PickRing(int queue)
    {
        FrontendRing[] rings = _rings;
        if (!_connected || rings.Length == 0)
        {
            throw new InvalidOperationException("The frontend is not connected.");
        }

        if (queue >= 0)
        {
            return (uint)queue < (uint)rings.Length ? rings[queue] : throw new ArgumentOutOfRangeException(nameof(queue));
        }

        return rings[(int)((uint)Interlocked.Increment(ref _nextQueue) % (uint)rings.Length)];
    }

    private void PublishRings(FrontendRing[] rings, int order)
    {
        string protocol = Options.ProtocolKeyOverride ?? BlkifProtocolNames.ToWire(Options.Protocol);
        while (true)
        {
            XenStoreTransaction t = _store.BeginTransaction();
            try
            {
                RemoveStaleRingKeys(t);
                if (rings.Length == 1)
                {
                    WriteRingKeys(t, FrontendPath, rings[0], order);
                }
                else
                {
                    Write(t, FrontendPath + "/" + BlkifKeys.MultiQueueNumQueues, rings.Length);
                    foreach (FrontendRing ring in rings)
                    {
                        WriteRingKeys(t, FrontendPath + "/" + BlkifKeys.Queue(ring.Index), ring, order);
                    }
                }

                if (order > 0)
                {
                    // The page count is one value for every queue, kept in the device directory.
                    if (Options.RingKeySpelling == RingKeySpelling.NumRingPages)
                    {
                        Write(t, FrontendPath + "/" + BlkifKeys.NumRingPages, 1 << order);
                    }
                    else
                    {
                        Write(t, FrontendPath + "/" + BlkifKeys.RingPageOrder, order);
                    }
                }

                if (!Options.SkipProtocolKey)
                {
                    _store.Write(t, FrontendPath + "/" + BlkifKeys.Protocol, protocol);
                }

                Write(t, FrontendPath + "/" + BlkifKeys.FeaturePersistent, Options.UsePersistentGrants ? 1 : 0);
                foreach ((string key, string value) in Options.ExtraKeys ?? new Dictionary<string, string>())
                {
                    _store.Write(t, FrontendPath + "/" + key, value);
                }

                foreach (string key in Options.OmitKeys ?? [])
                {
                    _store.Remove(t, FrontendPath + "/" + key);
                }
            }
            catch
            {
                _store.EndTransaction(t, abort: true);
                throw;
            }

            if (_store.EndTransaction(t))
            {
                return;
            }
        }
    }

    private void WriteRingKeys(XenStoreTransaction t, string directory, FrontendRing ring, int order)
    {
        if (order == 0)
        {
            Write(t, directory + "/" + BlkifKeys.RingRef, ring.RingRefs[0]);
        }
        else
        {
            for (int i = 0; i < ring.RingRefs.Count; i++)
            {
                Write(t, directory + "/" + BlkifKeys.RingRefN(i), ring.RingRefs[i]);
            }
        }

        Write(t, directory + "/" + BlkifKeys.EventChannel, ring.EventChannel);
    }

    /// <summary>Keys of an earlier connection would contradict the new layout (e.g. a stale ring-page-order).</summary>
    private void RemoveStaleRingKeys(XenStoreTransaction t)
    {
        foreach (string key in _store.Directory(t, FrontendPath) ?? [])
        {
            if (key.StartsWith(BlkifKeys.RingRef, StringComparison.Ordinal)
                || key.StartsWith("queue-", StringComparison.Ordinal)
                || key is BlkifKeys.RingPageOrder or BlkifKeys.NumRingPages or BlkifKeys.EventChannel
                    or BlkifKeys.MultiQueueNumQueues or BlkifKeys.Protocol or BlkifKeys.FeaturePersistent)
            {
                _store.Remove(t, FrontendPath + "/" + key);
            }
        }
    }

    /// <summary>blkfront_connect / blkfront_gather_backend_features.</summary>
    private NegotiatedFrontendFeatures ReadBackendDescription(int queues, int order, int entries, int backendMaxQueues, int backendMaxOrder)
    {
        string sectorsText = ReadBackend(BlkifKeys.Sectors)
            ?? throw new InvalidOperationException($"{BackendPath}/{BlkifKeys.Sectors} is missing.");
        ulong sectors = ulong.Parse(sectorsText, NumberStyles.None, CultureInfo.InvariantCulture);
        uint sectorSize = (uint)ReadBackendNumber(BlkifKeys.SectorSize, BlkifLimits.SectorSize);
        uint physicalSectorSize = (uint)ReadBackendNumber(BlkifKeys.PhysicalSectorSize, sectorSize);
        int backendIndirect = (int)Math.Min(int.MaxValue, ReadBackendNumber(BlkifKeys.FeatureMaxIndirectSegments, 0));
        int indirect = Options.UseIndirect ? Math.Min(Math.Min(backendIndirect, Options.MaxIndirectSegments), BlkifLimits.MaxIndirectSegments) : 0;
        if (indirect <= BlkifLimits.MaxSegmentsPerRequest)
        {
            indirect = 0;
        }

        return new NegotiatedFrontendFeatures
        {
            Protocol = Options.Protocol,
            Queues = queues,
            RingPageOrder = order,
            RingEntries = entries,
            MaxSegmentsPerRequest = indirect > 0 ? indirect : BlkifLimits.MaxSegmentsPerRequest,
            IndirectSegments = indirect,
            PersistentGrants = Options.UsePersistentGrants && ReadBackendNumber(BlkifKeys.FeaturePersistent, 0) == 1,
            FlushCache = ReadBackendNumber(BlkifKeys.FeatureFlushCache, 0) == 1,
            Barrier = ReadBackendNumber(BlkifKeys.FeatureBarrier, 0) == 1,
            Discard = ReadBackendNumber(BlkifKeys.FeatureDiscard, 0) == 1,
            DiscardGranularity = (uint)ReadBackendNumber(BlkifKeys.DiscardGranularity, 0),
            DiscardAlignment = (uint)ReadBackendNumber(BlkifKeys.DiscardAlignment, 0),
            DiscardSecure = ReadBackendNumber(BlkifKeys.DiscardSecure, 0) == 1,
            Sectors = sectors,
            SectorSize = sectorSize,
            PhysicalSectorSize = physicalSectorSize,
            Info = (VdiskInfo)ReadBackendNumber(BlkifKeys.Info, 0),
            BackendMaxQueues = backendMaxQueues,
            BackendMaxRingPageOrder = backendMaxOrder,
            BackendMaxIndirectSegments = backendIndirect,
        };
    }

    private async Task<FrontendDisconnectResult> CloseAsync(bool frontendInitiated)
    {
        _connected = false;
        bool backendClosed = true;
        try
        {
            if (frontendInitiated)
            {
                // Let in-flight requests finish before the backend is asked to tear the rings down.
                DateTime drainDeadline = DateTime.UtcNow + Options.StateTimeout;
                while (_rings.Any(r => r.Outstanding > 0 && !r.Halted) && DateTime.UtcNow < drainDeadline)
                {
                    await Task.Delay(1).ConfigureAwait(false);
                }

                SwitchState(XenbusState.Closing);
                await WaitForBackendAsync(s => s is null or XenbusState.Closing or XenbusState.Closed, "Closing", CancellationToken.None).ConfigureAwait(false);
            }
            else
            {
                SwitchState(XenbusState.Closing);
            }

            SwitchState(XenbusState.Closed);
            await WaitForBackendAsync(s => s is null or XenbusState.Closed, "Closed", CancellationToken.None).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            backendClosed = false;
        }

        int ringStillMapped = 0;
        int dataStillMapped = 0;
        int failed = 0;
        foreach (FrontendRing ring in _rings)
        {
            ringStillMapped += ring.Teardown(out int ringFailed, out int ringDataMapped);
            failed += ringFailed;
            dataStillMapped += ringDataMapped;
            _retiredProtocolViolations += ring.ProtocolViolations;
            _retiredGrantEndFailures += ring.GrantEndFailures;
        }

        int persistentStillMapped = _pool?.EndAll() ?? 0;
        _retiredGrantEndFailures += persistentStillMapped;
        _rings = [];
        return new FrontendDisconnectResult(backendClosed, ringStillMapped, dataStillMapped + persistentStillMapped, failed);
    }

    private async Task MonitorBackendAsync(CancellationToken cancellationToken)
    {
        try
        {
            while (true)
            {
                XenStoreWatchEvent watchEvent = await _store.ReadWatchAsync(cancellationToken).ConfigureAwait(false);
                if (watchEvent.Token == StateWatchToken)
                {
                    RefreshBackendState();
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
        catch (ObjectDisposedException)
        {
        }
    }

    private void RefreshBackendState()
    {
        XenbusState? state;
        try
        {
            string? text = _store.Read(XenStoreTransaction.None, BackendPath + "/" + BlkifKeys.State);
            state = XenbusStateText.TryParse(text, out XenbusState parsed) && text is not null ? parsed : null;
        }
        catch (XenStoreException)
        {
            // Once the toolstack removed the device, what is left above it is not ours to read.
            state = null;
        }
        catch (ObjectDisposedException)
        {
            return;
        }

        TaskCompletionSource changed;
        lock (_stateLock)
        {
            _backendState = state;
            changed = _backendStateChanged;
            _backendStateChanged = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

            // blkback_changed: the backend is closing (detach) - follow it, as blkfront_closing does.
            if (state == XenbusState.Closing && _connected && _closing is null)
            {
                _closing = CloseAsync(frontendInitiated: false);
            }
        }

        changed.TrySetResult();
    }

    private async Task WaitForBackendAsync(Func<XenbusState?, bool> predicate, string what, CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(Options.StateTimeout);
        while (true)
        {
            Task changed;
            XenbusState? state;
            lock (_stateLock)
            {
                state = _backendState;
                changed = _backendStateChanged.Task;
            }

            if (predicate(state))
            {
                return;
            }

            try
            {
                await changed.WaitAsync(timeout.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                throw new TimeoutException($"The backend at {BackendPath} did not reach {what} within {Options.StateTimeout} (it is {state?.ToString() ?? "absent"}).");
            }
        }
    }

    private void SwitchState(XenbusState state)
    {
        _store.Write(XenStoreTransaction.None, FrontendPath + "/" + BlkifKeys.State, XenbusStateText.ToWire(state));
        FrontendState = state;
    }

    private string? ReadBackend(string key) => _store.Read(XenStoreTransaction.None, BackendPath + "/" + key);

    /// <summary>A decimal backend key, or <paramref name="fallback"/> when absent or not a number (blkfront's xenbus_read_unsigned).</summary>
    private ulong ReadBackendNumber(string key, ulong fallback) =>
        ulong.TryParse(ReadBackend(key), NumberStyles.None, CultureInfo.InvariantCulture, out ulong value) ? value : fallback;

    private void Write(XenStoreTransaction t, string path, long value) =>
        _store.Write(t, path, value.ToString(CultureInfo.InvariantCulture));
}
