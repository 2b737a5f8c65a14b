using System.Globalization;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using XenDisk.Abi;
using XenDisk.Service.Hosting;
using XenDisk.Service.Simulation;
using XenDisk.Xen.Simulated;

namespace XenDisk.Cli.Tests.Support;

/// <summary>
/// `xendisk serve --simulate` in process, for commands that talk to the running service: one demo
/// guest on a raw disk (domain 1), and disks a test attaches through the simulated toolstack the
/// way libxl does (the backend opens each one and waits in InitWait for a guest).
/// </summary>
public sealed class RunningService : IAsyncDisposable
{
    public const int DeviceId = 51712;

    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    private readonly IHost _host;
    private readonly SimulatedToolstack _toolstack;
    private int _guests;

    private RunningService(IHost host, string socketPath)
    {
        _host = host;
        SocketPath = socketPath;
        Environment = host.Services.GetRequiredService<SimulationEnvironment>();
        _toolstack = new SimulatedToolstack(Environment.Hypervisor);
    }

    public string SocketPath { get; }

    public SimulationEnvironment Environment { get; }

    /// <summary>The demo guest's raw disk, DOMID/DEVICE.</summary>
    public static string RawDevice => string.Create(CultureInfo.InvariantCulture, $"1/{DeviceId}");

    /// <summary>Starts the service with <paramref name="images"/> as its image directory and its control
    /// socket in it; <paramref name="settings"/> adds or replaces configuration keys.</summary>
    public static async Task<RunningService> StartAsync(string images, IReadOnlyDictionary<string, string?>? settings = null)
    {
        string socket = Path.Combine(images, "control.sock");
        var configuration = new Dictionary<string, string?>
        {
            ["Control:SocketPath"] = socket,
            ["Telemetry:Prometheus:Enabled"] = "false",
            ["Simulation:Guests"] = "1",
            ["Simulation:DiskSizeMiB"] = "16",
            ["Simulation:PauseMilliseconds"] = "20",
            ["Simulation:ImageDirectory"] = images,
        };
        foreach ((string key, string? value) in settings ?? new Dictionary<string, string?>())
        {
            configuration[key] = value;
        }

        var options = new ServeOptions
        {
            Simulation = new SimulatedServicePlatform(),
            UseEnvironment = false,
            ConfigPath = Path.Combine(images, "absent.json"),
            MinimumLogLevel = LogLevel.Warning,
            ConfigurationOverrides = configuration,
        };
        IHost host = XenDiskServiceHost.Build(options, XenDiskServiceHost.BuildConfiguration(options), platform: null);
        await host.StartAsync().WaitAsync(Timeout);
        return new RunningService(host, socket);
    }

    /// <summary>Attaches <paramref name="target"/> to a new guest domain and returns the device as DOMID/DEVICE once its disk is open.</summary>
    public async Task<string> AttachAsync(string target)
    {
        SimulatedDomain domain = Environment.Hypervisor.CreateDomain($"cli-guest-{_guests++}", memoryPages: 1024);
        DiskAttachment attachment = _toolstack.AttachDisk(domain, DeviceId, target, readOnly: false);
        await _toolstack.WaitForBackendStateAsync(attachment, XenbusState.InitWait, Timeout);
        return string.Create(CultureInfo.InvariantCulture, $"{domain.Id}/{DeviceId}");
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await _host.StopAsync().WaitAsync(Timeout);
        }
        finally
        {
            _toolstack.Dispose();
            _host.Dispose();
        }
    }
}
