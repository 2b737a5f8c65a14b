using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using XenDisk.Backend.DataPlane;
using XenDisk.Storage;
using XenDisk.Xen;

namespace XenDisk.Backend.ControlPlane;

/// <summary>
/// The blkif backend's control plane (Linux xen-blkback xenbus.c; QEMU hw/block/xen-block.c):
/// watches /local/domain/&lt;self&gt;/backend/&lt;kind&gt; for devices the toolstack creates, runs each
/// device's XenbusState machine, and hands connected rings to the data plane (<see cref="BlkifRing"/>).
///
/// One watch loop reads every xenstore event and only routes it: the work of each device runs on
/// its own serial task, so one slow or failing device never delays another.
///
/// Ownership: the backend owns its xenstore connection and every device; a device owns its disk
/// (opened through the <see cref="IDiskProvider"/>, closed when the backend node disappears or the
/// backend stops) and its connection (grant handle, ring mappings, event channels, rings).
/// </summary>
public sealed class BlockBackend : IAsyncDisposable
{
    private const string BackendWatchTokenPrefix = "backend:";

    private readonly IXenPlatform _platform;
    private readonly IDiskProvider _disks;
    private readonly BackendOptions _options;
    private readonly ILogger _logger;
    private readonly ILogger _ringLogger;
    private readonly ConcurrentDictionary<string, BackendDevice> _devices = new(StringComparer.Ordinal);
    private readonly Dictionary<string, (string Kind, string Root)> _roots = new(StringComparer.Ordinal);
    private readonly Lock _lifecycle = new();
    private IXenStore? _store;
    private BackendContext? _context;
    private CancellationTokenSource? _stopping;
    private Task? _watchLoop;
    private Task? _sizeCheckLoop;
    private bool _started;
    private bool _stopped;

    public BlockBackend(IXenPlatform platform, IDiskProvider disks, BackendOptions options, ILoggerFactory loggerFactory)
    {
        ArgumentNullException.ThrowIfNull(platform);
        ArgumentNullException.ThrowIfNull(disks);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(loggerFactory);
        _platform = platform;
        _disks = disks;
        _options = options;
        _logger = loggerFactory.CreateLogger<BlockBackend>();
        _ringLogger = loggerFactory.CreateLogger<BlkifRing>();
    }

    public BackendOptions Options => _options;

    /// <summary>
    /// Raised each time a device connects to its frontend (first connect, reconnect, or pick-up after
    /// a restart), on that device's control task, with its status: its rings are running, and the
    /// frontend is told Connected right after. Lets
    /// telemetry adopt new rings when they appear instead of looking for them on a timer. A handler
    /// must be quick and must not throw (what it throws is logged and ignored).
    /// </summary>
    public event Action<DeviceStatus>? DeviceConnected;

    /// <summary>A snapshot of every device this backend serves (devices left to other backends by
    /// <see cref="BackendOptions.HotplugScriptFilter"/> are not listed), ordered by backend path.</summary>
    public IReadOnlyList<DeviceStatus> Devices =>
        [.. _devices.Values.Where(d => d.IsClaimed).Select(d => d.Status).OrderBy(s => s.BackendPath, StringComparer.Ordinal)];

    /// <summary>
    /// Device objects this backend keeps, served or not (a device left to another backend is still
    /// watched), and the disks its devices have open through <see cref="SharedDisks"/>: both go back to
    /// what they were once the devices are gone, so a soak run reads them to tell a leak per device.
    /// </summary>
    public (int Devices, int SharedDisks) TrackedCounts => (_devices.Count, _context?.Disks.Count ?? 0);

    /// <summary>The device of frontend domain <paramref name="frontendDomainId"/> with virtual device
    /// number <paramref name="deviceId"/>, or null when this backend does not serve it.</summary>
    public DeviceStatus? FindDevice(uint frontendDomainId, int deviceId) => Find(frontendDomainId, deviceId)?.Status;

    /// <summary>
    /// Validates the options, opens xenstore and starts watching every configured backend kind.
    /// Devices that already exist are picked up from the watches' initial firing. Returns once
    /// the watches are registered; device set-up proceeds in the background.
    /// </summary>
    public Task StartAsync(CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        _options.Validate();
        lock (_lifecycle)
        {
            if (_started)
            {
                throw new InvalidOperationException("The block backend was already started.");
            }

            _started = true;
        }

        IXenStore store = _platform.OpenXenStore();
        try
        {
            string domainPath = store.GetDomainPath(_platform.LocalDomainId);
            _context = new BackendContext(_platform, store, _disks, _options, _logger, _ringLogger, Forget, OnDeviceConnected);
            foreach (string kind in _options.Kinds)
            {
                string root = BackendPaths.KindRoot(domainPath, kind);
                _roots.Add(BackendWatchTokenPrefix + kind, (kind, root));
            }

            _stopping = new CancellationTokenSource();
            _store = store;
            foreach ((string token, (string _, string root)) in _roots)
            {
                store.Watch(root, token);
            }

            _watchLoop = Task.Run(() => WatchLoopAsync(store, _stopping.Token), CancellationToken.None);
            if (_options.SizeCheckInterval > TimeSpan.Zero)
            {
                _sizeCheckLoop = Task.Run(() => SizeCheckLoopAsync(_stopping.Token), CancellationToken.None);
            }
        }
        catch
        {
            _store = null;
            store.Dispose();
            throw;
        }

        ControlPlaneLog.BackendStarted(
            _logger,
            _platform.Description,
            _platform.LocalDomainId,
            string.Join(", ", _options.Kinds),
            _options.HotplugScriptFilter is null ? "" : $" (devices with script {_options.HotplugScriptFilter})");
        return Task.CompletedTask;
    }

    /// <summary>
    /// Graceful stop: stops watching, then for every device stops its rings (each drains its
    /// in-flight I/O and answers it), unmaps the rings, unbinds and closes the event channels and
    /// closes the disk.
    ///
    /// xenstore is deliberately left untouched: the backend directories keep their keys and their
    /// last state (usually Connected), and the frontends are not told anything. A frontend whose
    /// backend stopped keeps its rings granted and its requests queued; the next instance finds the
    /// device on its first look, publishes InitWait, opens the disk, sees the frontend still Connected and attaches
    /// to the same rings (xen-blkback likewise connects when the frontend is already Connected), so
    /// a restart is invisible to the guest apart from the pause. Writing Closed instead would make
    /// Linux blkfront tear the disk down, which a mounted file system does not survive.
    /// </summary>
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        lock (_lifecycle)
        {
            if (!_started || _stopped)
            {
                return;
            }

            _stopped = true;
        }

        IXenStore store = _store!;
        _stopping!.Cancel();
        try
        {
            await _watchLoop!.ConfigureAwait(false);
            if (_sizeCheckLoop is not null)
            {
                await _sizeCheckLoop.ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
        }

        foreach ((string token, (string _, string root)) in _roots)
        {
            try
            {
                store.Unwatch(root, token);
            }
            catch (XenException)
            {
                // The connection is closed below anyway.
            }
        }

        BackendDevice[] devices = [.. _devices.Values];
        await Task.WhenAll(devices.Select(d => d.ShutdownAsync())).WaitAsync(cancellationToken).ConfigureAwait(false);
        _devices.Clear();
        store.Dispose();
        _stopping.Dispose();
        ControlPlaneLog.BackendStopped(_logger, devices.Count(d => d.IsClaimed));
    }

    /// <summary>
    /// Online resize: re-reads the size of the device's disk (<see cref="IBlockDevice.Refresh"/>)
    /// and, when it changed, tells a connected frontend the new "sectors" (see
    /// <c>BackendDevice.ResizeAsync</c>). Returns true when the size changed.
    /// Throws <see cref="KeyNotFoundException"/> when this backend does not serve the device.
    /// </summary>
    public Task<bool> ResizeAsync(uint frontendDomainId, int deviceId, CancellationToken cancellationToken = default)
    {
        BackendDevice device = Find(frontendDomainId, deviceId)
            ?? throw new KeyNotFoundException($"No device {deviceId} of domain {frontendDomainId} is served by this backend.");
        return device.ResizeAsync(cancellationToken);
    }

    /// <inheritdoc cref="ResizeAsync(uint, int, CancellationToken)"/>
    public Task<bool> ResizeAsync(string backendPath, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(backendPath);
        if (!_devices.TryGetValue(backendPath, out BackendDevice? device) || !device.IsClaimed)
        {
            throw new KeyNotFoundException($"No device {backendPath} is served by this backend.");
        }

        return device.ResizeAsync(cancellationToken);
    }

    /// <summary>
    /// Starts maintenance work on the open disk of the device at <paramref name="backendPath"/>,
    /// beside its guest I/O (hydrating a copy-on-write overlay). <paramref name="prepare"/> is called
    /// with the disk under the device's control lock, so the disk stays open while it looks at it; it
    /// returns the work, or null to start nothing. The work runs on a thread of its own and owns
    /// nothing: the device keeps owning the disk, and before it closes it (removal, backend stop) it
    /// cancels the work's token and waits for the work to return, so work never sees its disk closed.
    /// Returns the running work, or null when nothing was started (the disk is not open, or
    /// <paramref name="prepare"/> declined). Throws <see cref="KeyNotFoundException"/> when this
    /// backend does not serve the device.
    /// </summary>
    public Task<Task?> StartDiskMaintenanceAsync(string backendPath, Func<IBlockDevice, Action<CancellationToken>?> prepare, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(backendPath);
        ArgumentNullException.ThrowIfNull(prepare);
        if (!_devices.TryGetValue(backendPath, out BackendDevice? device) || !device.IsClaimed)
        {
            throw new KeyNotFoundException($"No device {backendPath} is served by this backend.");
        }

        return device.StartMaintenanceAsync(prepare, cancellationToken);
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync(CancellationToken.None).ConfigureAwait(false);
    }

    /// <summary>
    /// The online-resize watch (blkback's xen_vbd_resize, which compares the size on every pass of its
    /// ring thread): every <see cref="BackendOptions.SizeCheckInterval"/> each served device re-reads
    /// its disk's size, and a device whose size changed tells its connected frontend. The devices
    /// look at once, each under its own control lock, so a device busy connecting delays only itself
    /// by a tick. A disk whose size query fails is logged and looked at again on the next tick.
    /// </summary>
    private async Task SizeCheckLoopAsync(CancellationToken cancellationToken)
    {
        using var ticks = new PeriodicTimer(_options.SizeCheckInterval, _options.DataPlane.TimeProvider);
        try
        {
            while (await ticks.WaitForNextTickAsync(cancellationToken).ConfigureAwait(false))
            {
                await Task.WhenAll(_devices.Values.Where(d => d.IsClaimed).Select(d => CheckSizeAsync(d, cancellationToken))).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
        }
    }

    private async Task CheckSizeAsync(BackendDevice device, CancellationToken cancellationToken)
    {
        try
        {
            await device.ResizeAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
        }
        catch (ObjectDisposedException)
        {
            // Removed between the listing and the look: nothing to resize.
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            ControlPlaneLog.SizeCheckFailed(_logger, device.BackendPath, e);
        }
    }

    private BackendDevice? Find(uint frontendDomainId, int deviceId) =>
        _devices.Values
            .Where(d => d.IsClaimed && d.FrontendDomainId == frontendDomainId && d.DeviceId == deviceId)
            .OrderBy(d => d.BackendPath, StringComparer.Ordinal)
            .FirstOrDefault();

    private async Task WatchLoopAsync(IXenStore store, CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            XenStoreWatchEvent watchEvent;
            try
            {
                watchEvent = await store.ReadWatchAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e)
            {
                ControlPlaneLog.WatchLoopFailed(_logger, e);
                return;
            }

            try
            {
                Route(store, watchEvent);
            }
            catch (Exception e)
            {
                // Routing only reads directories (a node may vanish between the event and our
                // look); whatever went wrong, the loop must keep serving every other device.
                ControlPlaneLog.WatchEventFailed(_logger, watchEvent.Path, e);
            }
        }
    }

    /// <summary>Turns a watch event into kicks of the devices it concerns; does no device work itself.</summary>
    private void Route(IXenStore store, XenStoreWatchEvent watchEvent)
    {
        if (watchEvent.Token.StartsWith(BackendContext.FrontendWatchTokenPrefix, StringComparison.Ordinal))
        {
            string backendPath = watchEvent.Token[BackendContext.FrontendWatchTokenPrefix.Length..];
            if (_devices.TryGetValue(backendPath, out BackendDevice? device))
            {
                device.TryKick();
            }

            return;
        }

        if (!_roots.TryGetValue(watchEvent.Token, out (string Kind, string Root) root))
        {
            return;
        }

        int depth = BackendPaths.ParseBelowRoot(root.Root, watchEvent.Path, out uint frontendDomainId, out int deviceId);
        switch (depth)
        {
            case 0:
                Rescan(store, root.Kind, root.Root, null);
                break;
            case 1:
                Rescan(store, root.Kind, root.Root, frontendDomainId);
                break;
            case 2:
                EnsureDevice(store, root.Kind, root.Root, frontendDomainId, deviceId, mustExist: true);
                break;
            default:
                break;
        }
    }

    /// <summary>
    /// An event on the kind root or a domain directory (the initial firing, or a whole directory
    /// created or removed): discover every device below it and kick every known one, so that
    /// devices whose nodes went away notice it.
    /// </summary>
    private void Rescan(IXenStore store, string kind, string root, uint? onlyDomain)
    {
        IReadOnlyList<string> domains = onlyDomain is { } single
            ? [single.ToString(System.Globalization.CultureInfo.InvariantCulture)]
            : store.Directory(XenStoreTransaction.None, root) ?? [];
        foreach (string domainText in domains)
        {
            if (!BackendPaths.TryParseDomainId(domainText, out uint domainId))
            {
                continue;
            }

            foreach (string deviceText in store.Directory(XenStoreTransaction.None, $"{root}/{domainText}") ?? [])
            {
                if (BackendPaths.TryParseDeviceId(deviceText, out int deviceId))
                {
                    EnsureDevice(store, kind, root, domainId, deviceId, mustExist: false);
                }
            }
        }

        string prefix = onlyDomain is { } d ? $"{root}/{d}/" : root + "/";
        foreach (BackendDevice device in _devices.Values)
        {
            if (device.BackendPath.StartsWith(prefix, StringComparison.Ordinal))
            {
                device.TryKick();
            }
        }
    }

    private void EnsureDevice(IXenStore store, string kind, string root, uint frontendDomainId, int deviceId, bool mustExist)
    {
        string path = BackendPaths.Device(root, frontendDomainId, deviceId);
        if (_devices.TryGetValue(path, out BackendDevice? existing) && existing.TryKick())
        {
            return;
        }

        // The last event of a removed device must not bring it back to life.
        if (mustExist && store.Directory(XenStoreTransaction.None, path) is null)
        {
            return;
        }

        var device = new BackendDevice(_context!, kind, path, frontendDomainId, deviceId);
        _devices[path] = device;
        device.TryKick();
    }

    private void OnDeviceConnected(BackendDevice device)
    {
        try
        {
            DeviceConnected?.Invoke(device.Status);
        }
        catch (Exception e)
        {
            ControlPlaneLog.ConnectedHandlerFailed(_logger, device.BackendPath, e);
        }
    }

    private void Forget(BackendDevice device) =>
        _devices.TryRemove(new KeyValuePair<string, BackendDevice>(device.BackendPath, device));
}
