using System.Buffers.Binary;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using XenDisk.Abi;
using XenDisk.Backend.ControlPlane;
using XenDisk.Service.Configuration;
using XenDisk.TestFrontend;
using XenDisk.Xen;
using XenDisk.Xen.Simulated;

namespace XenDisk.Service.Simulation;

/// <summary>The simulated machine of `xendisk serve --simulate` and where its images live.</summary>
public sealed class SimulationEnvironment : IDisposable
{
    public SimulationEnvironment(string? imageDirectory)
    {
        OwnsImageDirectory = imageDirectory is null;
        ImageDirectory = imageDirectory ?? Directory.CreateTempSubdirectory("xendisk-simulate-").FullName;
        Directory.CreateDirectory(ImageDirectory);
    }

    public SimulatedHypervisor Hypervisor { get; } = new();

    public string ImageDirectory { get; }

    public bool OwnsImageDirectory { get; }

    public void Dispose()
    {
        Hypervisor.Dispose();
        if (OwnsImageDirectory)
        {
            try
            {
                Directory.Delete(ImageDirectory, recursive: true);
            }
            catch (IOException)
            {
                // A temporary directory left behind is not worth failing the shutdown for.
            }
        }
    }
}

/// <summary>
/// The demo guests of `xendisk serve --simulate`: each gets a temporary raw image attached by the
/// simulated toolstack the way libxl attaches a disk, a blkfront-like frontend that connects to the
/// running backend, and a light, continuous, verified workload (write a pattern, read it back and
/// compare, flush now and then) that runs until the service stops, so that metrics, dashboards and
/// `xendisk status` have something to show on a machine without Xen.
/// The guests differ on purpose: the first uses two queues, a 4-page ring, indirect requests and
/// persistent grants and the 64-bit ABI; the second is a plain single-page, 32-bit-ABI guest. Every
/// other target uses the "raw:" prefix, so both target spellings are exercised.
/// Stopped before the backend (registered after it): the workload ends, the frontends disconnect and
/// the toolstack removes the devices, as a guest shutdown would.
/// </summary>
internal sealed class SimulatedGuestsService : IHostedService
{
    /// <summary>How long the simulated toolstack waits for InitWait before playing the hotplug script (libxl waits 10 s).</summary>
    private static readonly TimeSpan HotplugScriptTimeout = TimeSpan.FromSeconds(10);

    /// <summary>xvda, the virtual-device number libxl gives a guest's first disk.</summary>
    private const int GuestDeviceId = 51712;

    private const int SectorSize = BlkifLimits.SectorSize;

    /// <summary>Requests of up to 32 KiB: several segments, sometimes more than a direct request carries.</summary>
    private const int MaxSectorsPerOperation = 64;

    /// <summary>A flush after this many verified writes, so flush latency shows up in the metrics too.</summary>
    private const int WritesPerFlush = 8;

    private static readonly TimeSpan DetachTimeout = TimeSpan.FromSeconds(10);

    private readonly SimulationEnvironment _environment;
    private readonly SimulationSettings _settings;
    private readonly BackendOptions _backendOptions;
    private readonly ILogger _logger;
    private readonly List<Guest> _guests = [];
    private readonly CancellationTokenSource _stop = new();
    private SimulatedToolstack? _toolstack;

    public SimulatedGuestsService(SimulationEnvironment environment, IOptions<SimulationSettings> settings, BlockBackend backend, ILogger<SimulatedGuestsService> logger)
    {
        _environment = environment;
        _settings = settings.Value;
        _backendOptions = backend.Options;
        _logger = logger;
    }

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        SimulatedHypervisor hypervisor = _environment.Hypervisor;
        _toolstack = new SimulatedToolstack(hypervisor);
        string kind = _backendOptions.Kinds[0];
        // libxl gives a hotplug script 40 s (LIBXL_HOTPLUG_TIMEOUT); the simulated one answers at once.
        string? script = _backendOptions.HotplugScriptFilter is { } filter ? "/etc/xen/scripts/" + filter : null;
        for (int i = 0; i < _settings.Guests; i++)
        {
            string name = $"guest-{(char)('a' + i)}";
            string image = Path.Combine(_environment.ImageDirectory, name + ".img");
            using (FileStream file = File.Create(image))
            {
                file.SetLength((long)_settings.DiskSizeMiB << 20);
            }

            FrontendOptions options = i % 2 == 0
                ? new FrontendOptions { Protocol = BlkifProtocol.X86_64, Queues = 2, RingPageOrder = 2, UseIndirect = true, MaxIndirectSegments = 64, UsePersistentGrants = true }
                : new FrontendOptions { Protocol = BlkifProtocol.X86_32, Queues = 1, RingPageOrder = 0, UseIndirect = false, UsePersistentGrants = false };
            SimulatedDomain domain = hypervisor.CreateDomain(name, memoryPages: 8192);
            string target = i % 2 == 0 ? "raw:" + image : image;
            DiskAttachment attachment = _toolstack.AttachDisk(domain, GuestDeviceId, target, readOnly: false, kind: kind, script: script);
            var frontend = new BlockFrontend(hypervisor, domain, attachment, options);
            Task connected = frontend.ConnectAsync(cancellationToken);
            if (script is not null)
            {
                // libxl runs the hotplug script once the backend reaches InitWait, and the backend
                // connects a script-managed device only after the script reports hotplug-status=connected.
                await _toolstack.WaitForBackendStateAsync(attachment, XenbusState.InitWait, HotplugScriptTimeout).ConfigureAwait(false);
                using var store = hypervisor.OpenXenStore(hypervisor.Dom0);
                store.Write(XenStoreTransaction.None, attachment.BackendPath + "/" + BlkifKeys.HotplugStatus, "connected");
            }

            await connected.ConfigureAwait(false);
            NegotiatedFrontendFeatures negotiated = frontend.NegotiatedFrontendFeatures;
            SimulationLog.GuestAttached(_logger, name, domain.Id, target, GuestDeviceId, frontend.QueueCount,
                negotiated.PersistentGrants, negotiated.IndirectSegments);
            var guest = new Guest(name, domain, attachment, frontend);
            guest.Workload = Task.Run(() => RunWorkloadAsync(guest, seed: i + 1, _stop.Token), CancellationToken.None);
            _guests.Add(guest);
        }
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        foreach (Guest guest in _guests)
        {
            if (guest.Workload is not null)
            {
                await guest.Workload.ConfigureAwait(false);
            }

            SimulationLog.GuestDetached(_logger, guest.Name, guest.Operations, guest.BytesVerified, guest.Mismatches, guest.Errors);
            try
            {
                await guest.Frontend.DisconnectAsync().WaitAsync(DetachTimeout, cancellationToken).ConfigureAwait(false);
                await _toolstack!.DetachDiskAsync(guest.Attachment, DetachTimeout).ConfigureAwait(false);
            }
            catch (Exception e) when (e is TimeoutException or InvalidOperationException)
            {
                SimulationLog.GuestWorkloadFailed(_logger, guest.Name, e);
            }

            await guest.Frontend.DisposeAsync().ConfigureAwait(false);
            _environment.Hypervisor.DestroyDomain(guest.Domain);
        }

        _guests.Clear();
        _toolstack?.Dispose();
        _stop.Dispose();
    }

    /// <summary>
    /// Each round: write a pattern derived from (sector, round) to a random range, read it back into a
    /// poisoned buffer and compare; every <see cref="WritesPerFlush"/> rounds a flush. Ranges are
    /// aligned to 4 KiB so requests map to whole pages as a guest's page cache would send them.
    /// </summary>
    private async Task RunWorkloadAsync(Guest guest, int seed, CancellationToken cancellationToken)
    {
        var random = new Random(seed);
        byte[] written = new byte[MaxSectorsPerOperation * SectorSize];
        byte[] read = new byte[written.Length];
        long sectors = (long)guest.Frontend.Sectors;
        TimeSpan pause = TimeSpan.FromMilliseconds(_settings.PauseMilliseconds);
        bool reported = false;
        try
        {
            for (long round = 1; !cancellationToken.IsCancellationRequested; round++)
            {
                int count = 8 * random.Next(1, (MaxSectorsPerOperation / 8) + 1);
                long sector = 8 * random.NextInt64(0, (sectors - count) / 8);
                Memory<byte> data = written.AsMemory(0, count * SectorSize);
                Memory<byte> back = read.AsMemory(0, count * SectorSize);
                FillPattern(data.Span, sector, round);
                short status = await guest.Frontend.WriteAsync(sector, data).ConfigureAwait(false);
                if (status == BlkifStatus.Okay)
                {
                    back.Span.Fill(0xCC);
                    status = await guest.Frontend.ReadAsync(sector, back).ConfigureAwait(false);
                }

                if (status == BlkifStatus.Okay && round % WritesPerFlush == 0)
                {
                    status = await guest.Frontend.FlushAsync().ConfigureAwait(false);
                }

                guest.Operations++;
                if (status != BlkifStatus.Okay)
                {
                    guest.Errors++;
                    if (!reported)
                    {
                        reported = true;
                        SimulationLog.GuestRequestFailed(_logger, guest.Name, status);
                    }
                }
                else if (!back.Span.SequenceEqual(data.Span))
                {
                    guest.Mismatches++;
                    SimulationLog.GuestMismatch(_logger, guest.Name, sector);
                }
                else
                {
                    guest.BytesVerified += data.Length;
                }

                if (pause > TimeSpan.Zero)
                {
                    await Task.Delay(pause, cancellationToken).ConfigureAwait(false);
                }
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
        }
        catch (Exception e)
        {
            SimulationLog.GuestWorkloadFailed(_logger, guest.Name, e);
        }
    }

    private static void FillPattern(Span<byte> data, long sector, long round)
    {
        for (int offset = 0; offset < data.Length; offset += sizeof(long))
        {
            BinaryPrimitives.WriteInt64LittleEndian(data[offset..], ((sector * SectorSize) + offset) ^ (round << 40));
        }
    }

    private sealed class Guest(string name, SimulatedDomain domain, DiskAttachment attachment, BlockFrontend frontend)
    {
        public string Name { get; } = name;

        public SimulatedDomain Domain { get; } = domain;

        public DiskAttachment Attachment { get; } = attachment;

        public BlockFrontend Frontend { get; } = frontend;

        public Task? Workload { get; set; }

        public long Operations { get; set; }

        public long BytesVerified { get; set; }

        public long Mismatches { get; set; }

        public long Errors { get; set; }
    }
}
