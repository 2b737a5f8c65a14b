using System.Diagnostics.Metrics;
using Microsoft.Extensions.Logging.Abstractions;
using XenDisk.Backend.ControlPlane;
using XenDisk.Backend.DataPlane;
using XenDisk.Storage;
using XenDisk.TestFrontend;
using XenDisk.Xen.Simulated;

namespace XenDisk.Telemetry.Tests;

/// <summary>
/// A backend on the simulated hypervisor serving memory disks, and guests with blkfront-like frontends:
/// real rings, so the counters telemetry reads are the data plane's own. Every wait is bounded.
/// </summary>
internal sealed class SimulatedBackend : IAsyncDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    private const int DeviceId = 51712;
    private readonly List<BlockFrontend> _frontends = [];
    private readonly Dictionary<BlockFrontend, (SimulatedDomain Domain, DiskAttachment Attachment)> _guests = [];

    private SimulatedBackend()
    {
        Hypervisor = new SimulatedHypervisor();
        Toolstack = new SimulatedToolstack(Hypervisor);
        Backend = new BlockBackend(Hypervisor.Platform(Hypervisor.Dom0), new MemoryDiskProvider(), new BackendOptions
        {
            MaxQueues = 2,
            RingDrainTimeout = Timeout,
            DataPlane = new DataPlaneOptions { IoThreadsPerRing = 2 },
        }, NullLoggerFactory.Instance);
    }

    public SimulatedHypervisor Hypervisor { get; }

    public SimulatedToolstack Toolstack { get; }

    public BlockBackend Backend { get; }

    public static async Task<SimulatedBackend> StartAsync()
    {
        var host = new SimulatedBackend();
        await host.Backend.StartAsync(CancellationToken.None).WaitAsync(Timeout);
        return host;
    }

    public async Task<BlockFrontend> AttachGuestAsync(string name, FrontendOptions? options = null)
    {
        SimulatedDomain guest = Hypervisor.CreateDomain(name);
        DiskAttachment attachment = Toolstack.AttachDisk(guest, DeviceId, "memory:" + name, readOnly: false);
        var frontend = new BlockFrontend(Hypervisor, guest, attachment, options ?? new FrontendOptions { Queues = 2 });
        await frontend.ConnectAsync().WaitAsync(Timeout);
        _frontends.Add(frontend);
        _guests.Add(frontend, (guest, attachment));
        return frontend;
    }

    /// <summary>Ends a guest the way a reboot or shutdown does: blkfront closes, libxl removes the device, the domain is destroyed.</summary>
    public async Task DestroyGuestAsync(BlockFrontend frontend)
    {
        (SimulatedDomain domain, DiskAttachment attachment) = _guests[frontend];
        _guests.Remove(frontend);
        _frontends.Remove(frontend);
        await frontend.DisconnectAsync().WaitAsync(Timeout);
        await Toolstack.DetachDiskAsync(attachment, Timeout);
        await frontend.DisposeAsync();
        Hypervisor.DestroyDomain(domain);
    }

    /// <summary>Writes <paramref name="count"/> 4 KiB blocks (one request each), reads them back and checks them.</summary>
    public static async Task WriteAndVerifyAsync(BlockFrontend frontend, int count, int seed)
    {
        var random = new Random(seed);
        byte[] data = new byte[4096];
        byte[] back = new byte[4096];
        for (int i = 0; i < count; i++)
        {
            random.NextBytes(data);
            long sector = 8L * i;
            Assert.Equal(0, await frontend.WriteAsync(sector, data).WaitAsync(Timeout));
            Assert.Equal(0, await frontend.ReadAsync(sector, back).WaitAsync(Timeout));
            Assert.Equal(data, back);
        }
    }

    public async ValueTask DisposeAsync()
    {
        foreach (BlockFrontend frontend in _frontends)
        {
            await frontend.DisposeAsync();
        }

        await Backend.StopAsync(CancellationToken.None).WaitAsync(Timeout);
        Toolstack.Dispose();
        Hypervisor.Dispose();
    }

    private sealed class MemoryDiskProvider : IDiskProvider
    {
        public IBlockDevice Open(DiskSpecification specification) => new MemoryBlockDevice(16 << 20);
    }
}

/// <summary>An <see cref="IMeterFactory"/> for tests: plain meters, disposed with the factory.</summary>
internal sealed class TestMeterFactory : IMeterFactory
{
    private readonly List<Meter> _meters = [];

    public Meter Create(MeterOptions options)
    {
        var meter = new Meter(options);
        _meters.Add(meter);
        return meter;
    }

    public void Dispose()
    {
        foreach (Meter meter in _meters)
        {
            meter.Dispose();
        }
    }
}
