using XenDisk.Abi;
using XenDisk.Storage;
using XenDisk.Xen;

namespace XenDisk.Backend.ControlPlane;

/// <summary>
/// One backend device (Linux blkback's backend_info + xen_blkif): its disk, its connection to the
/// frontend, and the XenbusState machine that drives them (xen-blkback xenbus.c frontend_changed).
///
/// The machine is level-triggered: every watch event only "kicks" the device, and the device then
/// reads the current backend and frontend state and does whatever brings it in line. Watches
/// coalesce and may skip intermediate values, so acting on the value seen now (rather than on the
/// event) is what keeps two quick frontend transitions from being missed.
///
/// Concurrency: all control work of one device runs serially on a thread-pool task of its own, so a
/// slow disk open or ring drain holds up only this device and never the watch loop. Nothing thrown
/// by that work escapes: it becomes a log line, an "error" node and the Closed state.
/// </summary>
internal sealed partial class BackendDevice
{
    private readonly BackendContext _context;
    private readonly SemaphoreSlim _serial = new(1, 1);
    private readonly Lock _kickGate = new();
    private bool _kickPending;
    private bool _workerRunning;
    private bool _retired;
    private Task _worker = Task.CompletedTask;

    // Everything below is touched only while holding _serial.
    private bool _claimed;
    private bool _firstLook = true;
    private bool _frontendWatched;
    private XenbusState _state = XenbusState.Unknown;
    private DeviceConfiguration? _configuration;
    private IBlockDevice? _disk;
    private BlockDeviceInfo? _diskInfo;
    private bool _readOnly;
    private bool _discardOffered;
    private ulong _publishedSectors;
    private DeviceConnection? _connection;
    private XenbusState? _lastUnexpectedFrontendState;
    private string? _error;

    /// <summary>The frontend domain's name, read at set-up (see <see cref="DeviceStatus.MetricsName"/>).</summary>
    private string? _frontendName;

    // Set up: InitWait published and the disk open started (_opening) or done (_disk).
    private Task<OpenedDisk>? _opening;

    private bool IsSetUp => _opening is not null || _disk is not null;
    private int _setUpCount;
    private readonly long _createdAt;
    private long _discoveredAt;
    private long _initWaitAt;

    private bool _settingUp;
    private bool _setUpFailed;
    private bool _refusedFrontendLogged;

    private volatile DeviceStatus _status;

    public BackendDevice(BackendContext context, string kind, string backendPath, uint frontendDomainId, int deviceId)
    {
        _context = context;
        Kind = kind;
        BackendPath = backendPath;
        FrontendDomainId = frontendDomainId;
        DeviceId = deviceId;
        _createdAt = context.Options.DataPlane.TimeProvider.GetTimestamp();
        _status = BuildStatus();
    }

    public string Kind { get; }

    public string BackendPath { get; }

    public uint FrontendDomainId { get; }

    public int DeviceId { get; }

    /// <summary>False until the device passed the hotplug-script filter and became ours.</summary>
    public bool IsClaimed => Volatile.Read(ref _claimed);

    public DeviceStatus Status => _status;

    private string Name => BackendPath;

    /// <summary>
    /// Asks the device to look at xenstore again. Returns false when the device is retired
    /// (forgotten or shut down) so that the caller can create a fresh one for a re-added node.
    /// </summary>
    public bool TryKick()
    {
        lock (_kickGate)
        {
            if (_retired)
            {
                return false;
            }

            _kickPending = true;
            if (!_workerRunning)
            {
                _workerRunning = true;
                _worker = Task.Run(WorkAsync);
            }

            return true;
        }
    }

    private async Task WorkAsync()
    {
        while (true)
        {
            lock (_kickGate)
            {
                if (!_kickPending || _retired)
                {
                    _workerRunning = false;
                    return;
                }

                _kickPending = false;
            }

            await _serial.WaitAsync().ConfigureAwait(false);
            try
            {
                await EvaluateAsync().ConfigureAwait(false);
            }
            catch (Exception e)
            {
                await FailAsync(e).ConfigureAwait(false);
            }
            finally
            {
                _status = BuildStatus();
                _serial.Release();
            }
        }
    }

    /// <summary>
    /// Graceful stop of the backend: waits for the control work in progress, stops the rings
    /// (draining in-flight I/O), releases mappings and channels and closes the disk. xenstore is
    /// left as it is, so that the next backend instance finds the device and can pick up the
    /// frontend where this one left it (see <see cref="BlockBackend.StopAsync"/>).
    /// </summary>
    public async Task ShutdownAsync()
    {
        Task worker;
        lock (_kickGate)
        {
            _retired = true;
            worker = _worker;
        }

        await worker.ConfigureAwait(false);
        await _serial.WaitAsync().ConfigureAwait(false);
        try
        {
            await ReleaseAllAsync("backend stopping").ConfigureAwait(false);
        }
        finally
        {
            _status = BuildStatus();
            _serial.Release();
        }
    }

    /// <summary>
    /// Online resize (what blkback's xen_vbd_resize does): re-reads the disk size and, when it
    /// changed on a connected device, rewrites "sectors" and rewrites "state" with its current value
    /// in one transaction, which fires the frontend's watch on our state so that it re-reads the size.
    /// Returns true when the size changed.
    /// </summary>
    public async Task<bool> ResizeAsync(CancellationToken cancellationToken)
    {
        await _serial.WaitAsync(cancellationToken).ConfigureAwait(false);
        bool resized = false;
        try
        {
            if (_disk is null)
            {
                return false;
            }

            BlockDeviceInfo info = _disk.Refresh();
            _diskInfo = info;
            ulong sectors = SectorsOf(info);
            ulong old = _publishedSectors;
            if (sectors == old)
            {
                return false;
            }

            _publishedSectors = sectors;
            _status = BuildStatus();
            resized = true;
            if (_state == XenbusState.Connected)
            {
                string stateText = XenbusStateText.ToWire(_state);
                XenStoreTransactions.Run(_context.Store, t =>
                {
                    if (IsBeingRemoved(t))
                    {
                        return false;
                    }

                    Write(t, BlkifKeys.Sectors, sectors.ToString(System.Globalization.CultureInfo.InvariantCulture));
                    Write(t, BlkifKeys.State, stateText);
                    return true;
                });
            }

            ControlPlaneLog.DeviceResized(_context.Logger, Name, old, sectors);
            return true;
        }
        finally
        {
            // The periodic size check calls this every few seconds per device: an unchanged size
            // leaves the status as it was instead of rebuilding it.
            if (resized)
            {
                _status = BuildStatus();
            }

            _serial.Release();
        }
    }

    /// <summary>One look at xenstore, and whatever it takes to match what it says.</summary>
    private async Task EvaluateAsync()
    {
        IXenStore store = _context.Store;
        if (store.Directory(XenStoreTransaction.None, BackendPath) is null)
        {
            await ForgetAsync().ConfigureAwait(false);
            return;
        }

        if (!_claimed && !TryClaim())
        {
            return;
        }

        bool online = BackendPaths.TryParseDecimal(ReadBackend(BlkifKeys.Online), out uint onlineValue) && onlineValue != 0;
        XenbusState? backendState = ReadState(Key(BlkifKeys.State));

        // libxl's device removal writes online=0 and state=Closing into our directory, then waits
        // for Closed before it deletes the nodes. The nodes themselves are the toolstack's to remove.
        // Answered even when we are Closed already (a failed device): the store says Closing.
        if (!online && backendState == XenbusState.Closing)
        {
            ControlPlaneLog.ToolstackRemoval(_context.Logger, Name);
            await DisconnectAsync("toolstack removal").ConfigureAwait(false);
            SwitchState(XenbusState.Closed, allowDuringRemoval: true);
            return;
        }

        if (_setUpFailed)
        {
            // Failed under libxl's hotplug contract: it sits in InitWait with its "error" node, for
            // the hotplug script to report, until the toolstack removes it (handled above).
            LogRefusedFrontendOnce();
            return;
        }

        if (!IsSetUp)
        {
            // A fresh device (state absent or Initialising), or one we find on our first look
            // after a restart whatever state an earlier instance left it in.
            bool fresh = backendState is null or XenbusState.Unknown or XenbusState.Initialising;
            bool firstLook = _firstLook;
            _firstLook = false;
            if (!online || !(fresh || firstLook))
            {
                return;
            }

            _hotplugManaged = !string.IsNullOrEmpty(ReadBackend(BlkifKeys.Script));
            // Left set when SetUp throws, for FailAsync to tell a failed setup from a later failure.
            _settingUp = true;
            SetUp();
            _settingUp = false;

            if (!IsSetUp)
            {
                return;
            }
        }

        if (_disk is null)
        {
            // InitWait is out and the disk is opening: nothing connects before it is open. The
            // open's completion kicks the device again.
            if (_opening is not { IsCompleted: true })
            {
                return;
            }

            _settingUp = true;
            await CompleteOpenAsync().ConfigureAwait(false);
            _settingUp = false;
            if (_disk is null)
            {
                return;
            }
        }

        _firstLook = false;
        if (_connection?.StoppedRing is { } stopped)
        {
            string cause = stopped.IsHalted
                ? "halted: the frontend broke the ring protocol"
                : $"faulted: {stopped.Fault?.GetType().Name}: {stopped.Fault?.Message}";
            ControlPlaneLog.RingStoppedUnexpectedly(_context.Logger, Name, stopped.Setup.QueueIndex, cause, stopped.Fault);
            throw new DeviceSetupException($"queue {stopped.Setup.QueueIndex} {cause}");
        }

        await FollowFrontendAsync(online).ConfigureAwait(false);
    }

    /// <summary>The frontend half of xen-blkback's frontend_changed.</summary>
    private async Task FollowFrontendAsync(bool online)
    {
        XenbusState? frontendState = ReadState(_configuration!.FrontendPath + "/" + BlkifKeys.State);
        switch (frontendState)
        {
            case XenbusState.Initialising:
                // The frontend starts over: after a close ("prepare for reconnect") or without
                // telling us (we then never saw its Closed). Its old rings are gone either way.
                if (_state != XenbusState.InitWait && online)
                {
                    await DisconnectAsync("frontend re-initialising").ConfigureAwait(false);
                    ControlPlaneLog.DeviceReconnecting(_context.Logger, Name);
                    if (SwitchState(XenbusState.InitWait, clearError: true))
                    {
                        _error = null;
                    }
                }

                break;

            case XenbusState.Initialised:
            case XenbusState.Connected:
                // Connected too: two quick frontend writes may have coalesced into one event, and a
                // frontend still connected to an earlier backend instance re-attaches this way.
                if (_state == XenbusState.InitWait && HotplugScriptDone())
                {
                    await ConnectAsync().ConfigureAwait(false);
                }

                break;

            case XenbusState.Closing:
                await DisconnectAsync("frontend closing").ConfigureAwait(false);
                if (_state is not (XenbusState.Closing or XenbusState.Closed))
                {
                    SwitchState(XenbusState.Closing);
                }

                break;

            case XenbusState.Closed:
                await DisconnectAsync("frontend closed").ConfigureAwait(false);
                if (_state != XenbusState.Closed)
                {
                    SwitchState(XenbusState.Closed, allowDuringRemoval: true);
                }

                break;

            case null or XenbusState.Unknown:
                // The frontend's node is gone (the guest died or the toolstack removed it first).
                if (_connection is not null)
                {
                    await DisconnectAsync("frontend gone").ConfigureAwait(false);
                    SwitchState(XenbusState.Closed, allowDuringRemoval: true);
                }

                break;

            default:
                if (_lastUnexpectedFrontendState != frontendState)
                {
                    _lastUnexpectedFrontendState = frontendState;
                    ControlPlaneLog.UnexpectedFrontendState(_context.Logger, Name, frontendState.Value);
                }

                break;
        }
    }

    /// <summary>
    /// Turns any failure into what operators and the toolstack can see: a log line, the "error"
    /// node, and Closed, after releasing the connection. Never throws.
    /// </summary>
    private async Task FailAsync(Exception exception)
    {
        string reason = exception is DeviceSetupException or XenException or StorageException
            ? exception.Message
            : $"internal error: {exception.GetType().Name}: {exception.Message}";
        ControlPlaneLog.DeviceFailed(_context.Logger, Name, reason, exception is DeviceSetupException ? null : exception);
        _error = reason;
        bool duringSetUp = _settingUp;
        _settingUp = false;

        try
        {
            await DisconnectAsync("failure").ConfigureAwait(false);
        }
        catch (Exception e)
        {
            ControlPlaneLog.ReleaseFailed(_context.Logger, Name, "the connection", e);
        }

        try
        {
            if (duringSetUp && _hotplugManaged && FailIntoInitWait(reason))
            {
                return;
            }

            CommitState(XenbusState.Closed, t =>
            {
                if (_context.Store.Directory(t, BackendPath) is null)
                {
                    return false;
                }

                Write(t, BlkifKeys.Error, reason);
                Write(t, BlkifKeys.State, XenbusStateText.ToWire(XenbusState.Closed));
                return true;
            });
        }
        catch (Exception e)
        {
            ControlPlaneLog.ErrorNodeWriteFailed(_context.Logger, Name, e);
        }
    }

    private void LogRefusedFrontendOnce()
    {
        if (_refusedFrontendLogged || _configuration is null)
        {
            return;
        }

        XenbusState? frontendState = ReadState(_configuration.FrontendPath + "/" + BlkifKeys.State);
        if (frontendState is XenbusState.Initialised or XenbusState.Connected)
        {
            _refusedFrontendLogged = true;
            ControlPlaneLog.FrontendRefusedAfterFailure(_context.Logger, Name, frontendState.Value);
        }
    }

    /// <summary>The backend node is gone: release everything and leave the registry.</summary>
    private async Task ForgetAsync()
    {
        lock (_kickGate)
        {
            _retired = true;
        }

        bool wasClaimed = _claimed;
        await ReleaseAllAsync("backend node removed").ConfigureAwait(false);
        _context.Forget(this);
        if (wasClaimed)
        {
            ControlPlaneLog.DeviceRemoved(_context.Logger, Name);
        }
    }

    private async Task ReleaseAllAsync(string reason)
    {
        // Maintenance work (hydration) stops while the rings drain, and has stopped before the disk closes.
        StopMaintenance();
        try
        {
            await DisconnectAsync(reason).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            ControlPlaneLog.ReleaseFailed(_context.Logger, Name, "the connection", e);
        }

        // An open still in progress is waited for, so that what it opens is closed here too.
        await AbandonOpenAsync().ConfigureAwait(false);
        if (_disk is not null)
        {
            try
            {
                await WaitForMaintenanceAsync().ConfigureAwait(false);

                // Writes the guest saw completed reach stable storage even if it never flushed (or the
                // service is stopping under it): a clean stop or removal loses nothing acknowledged.
                if (!_disk.Info.ReadOnly && _disk.Flush() is var status and not IoStatus.Ok)
                {
                    ControlPlaneLog.FinalFlushFailed(_context.Logger, Name, status.ToString());
                }

                // A disk another device of the same VM still serves stays open (SharedDisks).
                if (_context.Disks.Release(_disk))
                {
                    _disk.Dispose();
                }
            }
            catch (Exception e)
            {
                ControlPlaneLog.ReleaseFailed(_context.Logger, Name, "the disk", e);
            }

            _disk = null;
            _diskInfo = null;
        }

        if (_frontendWatched)
        {
            try
            {
                _context.Store.Unwatch(_configuration!.FrontendPath + "/" + BlkifKeys.State, FrontendWatchToken);
            }
            catch (Exception e)
            {
                ControlPlaneLog.ReleaseFailed(_context.Logger, Name, "the frontend watch", e);
            }

            _frontendWatched = false;
        }
    }

    private async Task DisconnectAsync(string reason)
    {
        DeviceConnection? connection = _connection;
        if (connection is null)
        {
            return;
        }

        _connection = null;
        await connection.DisconnectAsync(_context.Options.RingDrainTimeout).ConfigureAwait(false);
        ControlPlaneLog.DeviceDisconnected(_context.Logger, Name, reason);
    }

    /// <summary>
    /// Publishes a new state, unless the toolstack is removing the device (online=0 and
    /// state=Closing): its Closing must not be overwritten by anything but our Closed, or libxl
    /// would wait for a Closed that never comes. Checked inside the transaction, so a removal
    /// that races with us makes the transaction conflict and be re-evaluated.
    /// </summary>
    private bool SwitchState(XenbusState state, bool allowDuringRemoval = false, bool clearError = false) =>
        CommitState(state, t =>
        {
            if ((!allowDuringRemoval && IsBeingRemoved(t)) || _context.Store.Directory(t, BackendPath) is null)
            {
                return false;
            }

            if (clearError)
            {
                _context.Store.Remove(t, Key(BlkifKeys.Error));
            }

            Write(t, BlkifKeys.State, XenbusStateText.ToWire(state));
            return true;
        });

    /// <summary>
    /// Runs <paramref name="body"/> (which writes the "state" key and whatever belongs with it) in
    /// one transaction. The snapshot shows the new state just before the commit, so that whoever a
    /// watch on our state wakes already finds it in <see cref="BlockBackend.Devices"/>; it is put
    /// back if the body declines or fails.
    /// </summary>
    private bool CommitState(XenbusState state, Func<XenStoreTransaction, bool> body)
    {
        XenbusState previous = _state;
        _state = state;
        _status = BuildStatus();
        bool written = false;
        try
        {
            written = XenStoreTransactions.Run(_context.Store, body);
        }
        finally
        {
            if (!written)
            {
                _state = previous;
                _status = BuildStatus();
            }
        }

        if (written && previous != state)
        {
            ControlPlaneLog.DeviceStateChanged(_context.Logger, Name, state);
        }

        return written;
    }

    private bool IsBeingRemoved(XenStoreTransaction transaction)
    {
        string? online = _context.Store.Read(transaction, Key(BlkifKeys.Online));
        string? state = _context.Store.Read(transaction, Key(BlkifKeys.State));
        return !(BackendPaths.TryParseDecimal(online, out uint value) && value != 0)
            && XenbusStateText.TryParse(state, out XenbusState parsed) && parsed == XenbusState.Closing;
    }

    private string FrontendWatchToken => BackendContext.FrontendWatchTokenPrefix + BackendPath;

    private string Key(string key) => BackendPaths.Key(BackendPath, key);

    private string? ReadBackend(string key) => _context.Store.Read(XenStoreTransaction.None, Key(key));

    private XenbusState? ReadState(string path)
    {
        string? text = _context.Store.Read(XenStoreTransaction.None, path);
        return text is not null && XenbusStateText.TryParse(text, out XenbusState state) ? state : null;
    }

    private void Write(XenStoreTransaction transaction, string key, string value) =>
        _context.Store.Write(transaction, Key(key), value);

    private static ulong SectorsOf(BlockDeviceInfo info) => (ulong)info.SizeBytes >> BlkifLimits.SectorShift;

    private DeviceStatus BuildStatus()
    {
        DeviceConnection? connection = _connection;
        return new DeviceStatus
        {
            BackendPath = BackendPath,
            Kind = Kind,
            FrontendDomainId = FrontendDomainId,
            DeviceId = DeviceId,
            State = _state,
            FrontendPath = _configuration?.FrontendPath,
            FrontendName = _frontendName,
            Disk = _diskInfo,
            ReadOnly = _readOnly,
            Features = connection?.Features,
            Protocol = connection?.Rings.Protocol,
            Queues = connection?.QueueStatuses ?? [],
            Error = _error,
        };
    }
}
