using Xunit.Abstractions;
using XenDisk.Abi;
using XenDisk.Backend.ControlPlane;
using XenDisk.Xen;
using XenDisk.Xen.Simulated;

namespace XenDisk.Backend.Tests.Harness;

/// <summary>
/// A simulated host: hypervisor, toolstack, named memory disks and a running <see cref="BlockBackend"/>
/// in dom0. Every wait is bounded by <see cref="Timeout"/>, so a broken backend fails a test, never hangs it.
/// </summary>
public sealed class BackendTestBed : IAsyncDisposable
{
    /// <summary>Generous: the suite runs on two busy cores; a healthy step takes milliseconds.</summary>
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    private readonly IXenStore _dom0Store;
    private readonly List<IXenStore> _guestStores = [];
    private readonly CancellationTokenSource _disposing = new();
    private readonly List<Task> _hotplugScripts = [];

    private BackendTestBed(ITestOutputHelper? output, BackendOptions options)
    {
        Logs = new TestLoggerFactory(output);
        Hypervisor = new SimulatedHypervisor();
        Toolstack = new SimulatedToolstack(Hypervisor);
        Disks = new TestDiskProvider();
        Options = options;
        Backend = new BlockBackend(Hypervisor.Platform(Hypervisor.Dom0), Disks, options, Logs);
        _dom0Store = Hypervisor.Platform(Hypervisor.Dom0).OpenXenStore();
    }

    public SimulatedHypervisor Hypervisor { get; }

    public SimulatedToolstack Toolstack { get; }

    public TestDiskProvider Disks { get; }

    public TestLoggerFactory Logs { get; }

    public BackendOptions Options { get; }

    public BlockBackend Backend { get; private set; }

    /// <summary>
    /// Small defaults keep each test light on two cores: two queues at most, and a persistent-grant
    /// cache and I/O pool sized for the few requests a test issues; no periodic size check.
    /// </summary>
    public static BackendOptions DefaultOptions => new()
    {
        MaxQueues = 4,
        RingDrainTimeout = Timeout,
        // Off unless a test turns it on: a periodic look would race the tests that resize by hand.
        SizeCheckInterval = TimeSpan.Zero,
        DataPlane = new XenDisk.Backend.DataPlane.DataPlaneOptions { IoThreadsPerRing = 2 },
    };

    public static async Task<BackendTestBed> StartAsync(ITestOutputHelper? output, BackendOptions? options = null)
    {
        BackendTestBed bed = Create(output, options);
        await bed.StartBackendAsync();
        return bed;
    }

    /// <summary>A test bed whose backend is not running yet (to prepare xenstore before it looks).</summary>
    public static BackendTestBed Create(ITestOutputHelper? output, BackendOptions? options = null) => new(output, options ?? DefaultOptions);

    public Task StartBackendAsync() => Backend.StartAsync(CancellationToken.None).WaitAsync(Timeout);

    public SimulatedDomain CreateGuest(string name = "guest") => Hypervisor.CreateDomain(name);

    /// <summary>
    /// Attaches a disk as <see cref="SimulatedToolstack.AttachDisk"/> does. With a script named
    /// "xendisk" libxl would then run config/xendisk-hotplug once the backend reached InitWait;
    /// unless <paramref name="runHotplugScript"/> is false, the test bed plays that part too.
    /// </summary>
    public DiskAttachment Attach(SimulatedDomain guest, int deviceId, string target, bool readOnly = false, string kind = "vbd", string? script = null,
        bool runHotplugScript = true)
    {
        DiskAttachment attachment = Toolstack.AttachDisk(guest, deviceId, target, readOnly, kind: kind, script: script);
        if (runHotplugScript && script is not null && Path.GetFileName(script) == "xendisk")
        {
            lock (_hotplugScripts)
            {
                _hotplugScripts.Add(RunHotplugScriptAsync(attachment, _disposing.Token));
            }
        }

        return attachment;
    }

    /// <summary>
    /// What libxl and `xendisk add` do (docs/E2E.md "Hotplug contract"), polled: hotplug-status=error
    /// when the backend left an "error" node; hotplug-status=connected once it shows InitWait or
    /// later with the disk-opened marker. Gives up quietly after <see cref="Timeout"/> or when the bed closes.
    /// </summary>
    private async Task RunHotplugScriptAsync(DiskAttachment attachment, CancellationToken cancellationToken)
    {
        DateTime deadline = DateTime.UtcNow + Timeout;
        try
        {
            while (DateTime.UtcNow < deadline)
            {
                if (ReadBackend(attachment, BlkifKeys.Error) is not null)
                {
                    WriteBackend(attachment, BlkifKeys.HotplugStatus, "error");
                    return;
                }

                string? state = ReadBackend(attachment, BlkifKeys.State);
                if (state is "2" or "3" or "4" && ReadBackend(attachment, DiskOpenedKey) == "1")
                {
                    // The error check once more: the backend writes "error" and the marker never together.
                    WriteBackend(attachment, BlkifKeys.HotplugStatus, ReadBackend(attachment, BlkifKeys.Error) is null ? "connected" : "error");
                    return;
                }

                await Task.Delay(10, cancellationToken);
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>
    /// What <see cref="SimulatedToolstack.AttachDisk"/> writes, in one transaction, except that
    /// <paramref name="backendKeys"/> may change or (with null) drop backend keys: a toolstack gone wrong.
    /// </summary>
    public DiskAttachment AttachWithKeys(SimulatedDomain guest, int deviceId, string target, IReadOnlyDictionary<string, string?> backendKeys)
    {
        string id = guest.Id.ToString(System.Globalization.CultureInfo.InvariantCulture);
        string device = deviceId.ToString(System.Globalization.CultureInfo.InvariantCulture);
        string backendPath = SimulatedToolstack.BackendPathFor(Hypervisor.Dom0, "vbd", guest, deviceId);
        string frontendPath = SimulatedToolstack.FrontendPathFor(guest, deviceId);
        var keys = new Dictionary<string, string?>(StringComparer.Ordinal)
        {
            [BlkifKeys.Frontend] = frontendPath,
            [BlkifKeys.FrontendId] = id,
            [BlkifKeys.Params] = target,
            [BlkifKeys.Mode] = "w",
            [BlkifKeys.Type] = "phy",
            [BlkifKeys.Online] = "1",
            [BlkifKeys.State] = "1",
        };
        foreach ((string key, string? value) in backendKeys)
        {
            keys[key] = value;
        }

        while (true)
        {
            XenStoreTransaction t = _dom0Store.BeginTransaction();
            _dom0Store.Mkdir(t, backendPath);
            _dom0Store.SetPermissions(t, backendPath, [new(0, XenStoreAccess.None), new(guest.Id, XenStoreAccess.Read)]);
            foreach ((string key, string? value) in keys)
            {
                if (value is not null)
                {
                    _dom0Store.Write(t, backendPath + "/" + key, value);
                }
            }

            _dom0Store.Mkdir(t, frontendPath);
            _dom0Store.SetPermissions(t, frontendPath, [new(guest.Id, XenStoreAccess.None), new(0, XenStoreAccess.Read)]);
            _dom0Store.Write(t, frontendPath + "/backend", backendPath);
            _dom0Store.Write(t, frontendPath + "/backend-id", "0");
            _dom0Store.Write(t, frontendPath + "/" + BlkifKeys.VirtualDevice, device);
            _dom0Store.Write(t, frontendPath + "/" + BlkifKeys.State, "1");
            if (_dom0Store.EndTransaction(t))
            {
                return new DiskAttachment(guest, Hypervisor.Dom0, deviceId, "vbd", target, false, backendPath, frontendPath);
            }
        }
    }

    public Task WaitForBackendStateAsync(DiskAttachment attachment, XenbusState state) =>
        Toolstack.WaitForBackendStateAsync(attachment, state, Timeout);

    public string? ReadBackend(DiskAttachment attachment, string key) =>
        _dom0Store.Read(XenStoreTransaction.None, attachment.BackendPath + "/" + key);

    public void WriteBackend(DiskAttachment attachment, string key, string value) =>
        _dom0Store.Write(XenStoreTransaction.None, attachment.BackendPath + "/" + key, value);

    public void RemoveBackendKey(DiskAttachment attachment, string key) =>
        _dom0Store.Remove(XenStoreTransaction.None, attachment.BackendPath + "/" + key);

    public string? Read(string path) => _dom0Store.Read(XenStoreTransaction.None, path);

    /// <summary>Writes the domain's "vm" key (/vm/UUID) as libxl does when it builds a domain.</summary>
    public void SetVm(SimulatedDomain guest, string uuid) =>
        _dom0Store.Write(XenStoreTransaction.None, _dom0Store.GetDomainPath(guest.Id) + "/vm", "/vm/" + uuid);

    /// <summary>Writes a key into the frontend directory as the guest itself would (through its own connection).</summary>
    public void WriteFrontend(DiskAttachment attachment, string key, string value) =>
        GuestStore(attachment.Guest).Write(XenStoreTransaction.None, attachment.FrontendPath + "/" + key, value);

    public void RemoveFrontendKey(DiskAttachment attachment, string key) =>
        GuestStore(attachment.Guest).Remove(XenStoreTransaction.None, attachment.FrontendPath + "/" + key);

    public void SetFrontendState(DiskAttachment attachment, XenbusState state) =>
        WriteFrontend(attachment, BlkifKeys.State, XenbusStateText.ToWire(state));

    /// <summary>Attaches a disk and waits for the backend to offer it (InitWait) with the disk open (its keys and the disk-opened marker published).</summary>
    public async Task<DiskAttachment> AttachReadyAsync(SimulatedDomain guest, int deviceId, string target, long sizeBytes = 4 << 20,
        int logicalSectorSize = 512, bool readOnly = false, string kind = "vbd")
    {
        Disks.Add(target, sizeBytes, logicalSectorSize);
        DiskAttachment attachment = Attach(guest, deviceId, target, readOnly, kind);
        await WaitForBackendStateAsync(attachment, XenbusState.InitWait);
        await WaitForDiskOpenedAsync(attachment);
        return attachment;
    }

    /// <summary>The backend's "disk-opened" marker (docs/E2E.md "Hotplug contract"): written with the disk's keys once the disk is open.</summary>
    public const string DiskOpenedKey = BlkifKeys.DiskOpened;

    /// <summary>Waits for the disk-opened marker, which the backend writes after InitWait once the disk is open.</summary>
    public Task WaitForDiskOpenedAsync(DiskAttachment attachment) =>
        Toolstack.WaitForBackendKeyAsync(attachment, DiskOpenedKey, value => value == "1", Timeout);

    /// <summary>Polls <paramref name="condition"/> until it holds; for outcomes no watch announces.</summary>
    public static async Task WaitUntilAsync(Func<bool> condition, string what)
    {
        DateTime deadline = DateTime.UtcNow + Timeout;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"Timed out waiting until {what}.");
            }

            await Task.Delay(10);
        }
    }

    /// <summary>Stops the running backend and starts a fresh instance over the same hypervisor and disks;
    /// <paramref name="beforeStart"/> sees the new instance before it looks at xenstore.</summary>
    public async Task RestartBackendAsync(Action<BlockBackend>? beforeStart = null)
    {
        await Backend.StopAsync(CancellationToken.None).WaitAsync(Timeout);
        Backend = new BlockBackend(Hypervisor.Platform(Hypervisor.Dom0), Disks, Options, Logs);
        beforeStart?.Invoke(Backend);
        await Backend.StartAsync(CancellationToken.None).WaitAsync(Timeout);
    }

    public async ValueTask DisposeAsync()
    {
        await _disposing.CancelAsync();
        Task[] scripts;
        lock (_hotplugScripts)
        {
            scripts = [.. _hotplugScripts];
        }

        await Task.WhenAll(scripts).WaitAsync(Timeout);
        _disposing.Dispose();
        try
        {
            await Backend.DisposeAsync().AsTask().WaitAsync(Timeout);
        }
        finally
        {
            foreach (IXenStore store in _guestStores)
            {
                store.Dispose();
            }

            _dom0Store.Dispose();
            Toolstack.Dispose();
            Hypervisor.Dispose();
            Disks.Dispose();
        }
    }

    private IXenStore GuestStore(SimulatedDomain guest)
    {
        lock (_guestStores)
        {
            foreach (IXenStore existing in _guestStores)
            {
                if (existing is SimulatedXenStore simulated && simulated.DomainId == guest.Id)
                {
                    return existing;
                }
            }

            IXenStore store = guest.Platform.OpenXenStore();
            _guestStores.Add(store);
            return store;
        }
    }
}
