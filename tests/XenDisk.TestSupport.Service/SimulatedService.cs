using System.Globalization;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using XenDisk.Abi;
using XenDisk.Service.Control;
using XenDisk.Service.Hosting;
using XenDisk.Service.Simulation;
using XenDisk.TestFrontend;
using XenDisk.Xen.Simulated;

namespace XenDisk.TestSupport.Service;

/// <summary>
/// The whole service in process on the simulated hypervisor (`xendisk serve --simulate`), with one demo
/// guest (a raw disk, as domain 1) and whatever disks a test attaches itself through the simulated
/// toolstack, the way libxl attaches them, with or without a blkfront-like guest connected. The service
/// tests drive it through its control socket; the command-line tests point `xendisk` commands at it.
/// </summary>
public sealed class SimulatedService : IAsyncDisposable
{
    /// <summary>xvda, the virtual-device number libxl gives a guest's first disk.</summary>
    public const int GuestDeviceId = 51712;

    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    /// <summary>The demo guest's raw disk, DOMID/DEVICE, as `xendisk status` shows it.</summary>
    public static string RawDevice => string.Create(CultureInfo.InvariantCulture, $"1/{GuestDeviceId}");

    private readonly IHost _host;
    private readonly SimulatedToolstack _toolstack;
    private readonly List<AttachedDisk> _disks = [];
    private bool _stopped;

    private SimulatedService(IHost host, string socketPath, LogCapture hydrationLog)
    {
        _host = host;
        SocketPath = socketPath;
        HydrationLog = hydrationLog;
        Environment = host.Services.GetRequiredService<SimulationEnvironment>();
        _toolstack = new SimulatedToolstack(Environment.Hypervisor);
    }

    public string SocketPath { get; }

    public SimulationEnvironment Environment { get; }

    /// <summary>What the service host logged (event id, message), Information and above: hydrations, the backend's stop.</summary>
    public LogCapture HydrationLog { get; }

    /// <summary>Starts a service whose allowed image directory is <paramref name="images"/>.</summary>
    public static async Task<SimulatedService> StartAsync(string work, string images, IReadOnlyDictionary<string, string?>? settings = null)
    {
        string socket = Path.Combine(work, "control.sock");
        var hydrationLog = new LogCapture("XenDisk.Service.");
        var options = new ServeOptions
        {
            Simulation = new SimulatedServicePlatform(),
            UseEnvironment = false,
            ConfigPath = Path.Combine(work, "absent.json"),
            MinimumLogLevel = LogLevel.Warning,
            ConfigurationOverrides = WithDefaults(settings, new Dictionary<string, string?>
            {
                ["Control:SocketPath"] = socket,
                ["Telemetry:Prometheus:Enabled"] = "false",
                ["Simulation:Guests"] = "1",
                ["Simulation:DiskSizeMiB"] = "16",
                ["Simulation:PauseMilliseconds"] = "20",
                ["Simulation:ImageDirectory"] = images,
            }),
            ConfigureServices = services =>
            {
                services.AddSingleton<ILoggerProvider>(hydrationLog);
                services.Configure<LoggerFilterOptions>(filters => filters.Rules.Add(
                    new LoggerFilterRule(typeof(LogCapture).FullName, hydrationLog.CategoryPrefix, LogLevel.Information, null)));
            },
        };
        IHost host = XenDiskServiceHost.Build(options, XenDiskServiceHost.BuildConfiguration(options), platform: null);
        await host.StartAsync().WaitAsync(Timeout);
        return new SimulatedService(host, socket, hydrationLog);
    }

    /// <summary>The service's settings: <paramref name="defaults"/>, with the caller's <paramref name="settings"/> over them.</summary>
    private static Dictionary<string, string?> WithDefaults(IReadOnlyDictionary<string, string?>? settings, Dictionary<string, string?> defaults)
    {
        foreach ((string key, string? value) in settings ?? new Dictionary<string, string?>())
        {
            defaults[key] = value;
        }

        return defaults;
    }

    /// <summary>Attaches <paramref name="target"/> to a new guest domain; with <paramref name="connect"/> a frontend connects to it.</summary>
    public async Task<AttachedDisk> AttachAsync(string target, bool readOnly = false, bool connect = true)
    {
        SimulatedDomain domain = Environment.Hypervisor.CreateDomain($"hydrate-{_disks.Count}", memoryPages: 4096);
        DiskAttachment attachment = _toolstack.AttachDisk(domain, GuestDeviceId, target, readOnly);
        BlockFrontend? frontend = null;
        if (connect)
        {
            frontend = new BlockFrontend(Environment.Hypervisor, domain, attachment,
                new FrontendOptions { Queues = 2, RingPageOrder = 1, UseIndirect = true, MaxIndirectSegments = 32 });
            using var timeout = new CancellationTokenSource(Timeout);
            await frontend.ConnectAsync(timeout.Token);
        }
        else
        {
            // The disk is open once the backend publishes its disk-opened marker (after InitWait).
            await _toolstack.WaitForBackendStateAsync(attachment, XenbusState.InitWait, Timeout);
            await _toolstack.WaitForBackendKeyAsync(attachment, BlkifKeys.DiskOpened, value => value == "1", Timeout);
        }

        var disk = new AttachedDisk(domain, attachment, frontend);
        _disks.Add(disk);
        return disk;
    }

    /// <summary>Attaches <paramref name="target"/> expecting the backend to refuse it; returns the backend's "error" node.</summary>
    public async Task<string?> AttachRefusedAsync(string target)
    {
        SimulatedDomain domain = Environment.Hypervisor.CreateDomain($"refused-{_disks.Count}", memoryPages: 4096);
        DiskAttachment attachment = _toolstack.AttachDisk(domain, GuestDeviceId, target, readOnly: false);
        await _toolstack.WaitForBackendStateAsync(attachment, XenbusState.Closed, Timeout);
        using var store = Environment.Hypervisor.Platform(Environment.Hypervisor.Dom0).OpenXenStore();
        return store.Read(XenDisk.Xen.XenStoreTransaction.None, attachment.BackendPath + "/error");
    }

    /// <summary>Detaches the way libxl does (Closing, wait for Closed, remove the nodes); the backend then closes the disk.</summary>
    public async Task DetachAsync(AttachedDisk disk)
    {
        if (!_disks.Remove(disk))
        {
            return;
        }

        if (disk.Frontend is { } frontend)
        {
            await frontend.DisconnectAsync().WaitAsync(Timeout);
        }

        await _toolstack.DetachDiskAsync(disk.Attachment, Timeout);
        if (disk.Frontend is { } gone)
        {
            await gone.DisposeAsync();
        }

        Environment.Hypervisor.DestroyDomain(disk.Domain);
    }

    public Task<ServiceStatusReport> StatusAsync() => ControlClient.GetStatusAsync(SocketPath);

    /// <summary>The device's hydration as status reports it (null when none).</summary>
    public async Task<HydrationReport?> HydrationAsync(AttachedDisk disk)
    {
        ServiceStatusReport status = await StatusAsync();
        return status.Devices.Single(d => d.BackendPath == disk.BackendPath).Hydration;
    }

    /// <summary>Polls status until <paramref name="condition"/> holds; fails the test after <see cref="Timeout"/>.</summary>
    public async Task<ServiceStatusReport> WaitForAsync(Func<ServiceStatusReport, bool> condition, string what)
    {
        using var deadline = new CancellationTokenSource(Timeout);
        ServiceStatusReport? last = null;
        while (!deadline.IsCancellationRequested)
        {
            last = await StatusAsync();
            if (condition(last))
            {
                return last;
            }

            await Task.Delay(50, CancellationToken.None);
        }

        Assert.Fail($"Timed out waiting for {what}; last status:\n{(last is null ? "none" : StatusTextFormatter.Format(last))}");
        throw new InvalidOperationException();
    }

    public async Task<HydrationReport> WaitForHydrationAsync(AttachedDisk disk, Func<HydrationReport, bool> condition, string what)
    {
        ServiceStatusReport status = await WaitForAsync(
            s => s.Devices.SingleOrDefault(d => d.BackendPath == disk.BackendPath)?.Hydration is { } h && condition(h), what);
        return status.Devices.Single(d => d.BackendPath == disk.BackendPath).Hydration!;
    }

    /// <summary>Detaches what is still attached and stops the service (the backend closes every disk).</summary>
    public async Task StopAsync()
    {
        if (_stopped)
        {
            return;
        }

        _stopped = true;
        foreach (AttachedDisk disk in _disks.ToArray())
        {
            if (disk.Frontend is not null)
            {
                await DetachAsync(disk);
            }
        }

        await _host.StopAsync().WaitAsync(Timeout);
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await StopAsync();
        }
        finally
        {
            _toolstack.Dispose();
            _host.Dispose();
        }
    }
}

/// <summary>A disk a test attached: its guest domain, the toolstack's nodes and, when connected, the guest's frontend.</summary>
public sealed record AttachedDisk(SimulatedDomain Domain, DiskAttachment Attachment, BlockFrontend? Frontend)
{
    public string BackendPath => Attachment.BackendPath;

    /// <summary>DOMID/DEVICE, as `xendisk status` shows the device.</summary>
    public string Name => string.Create(CultureInfo.InvariantCulture, $"{Domain.Id}/{Attachment.DeviceId}");
}
