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

    /// <summary>How long the played hotplug script waits for the disk-opened marker (config/xendisk-hotplug waits 30 s).</summary>
    private static readonly TimeSpan DiskOpenTimeout = TimeSpan.FromSeconds(30);

    /// <summary>xvda, the virtual-device number libxl gives a guest's first disk.</summary>
    private const int GuestDeviceId = 51712;

    /// <summary>Requests of up to 32 KiB (eight pages): several segments, as a guest's page cache sends them.</summary>
    private const int MaxPagesPerRequest = 8;

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
                // libxl runs the hotplug script once the backend reaches InitWait; the script reports
                // hotplug-status=connected once the backend's disk-opened marker is there (or error on
                // its "error" node), and the backend connects a script-managed device only after that.
                await _toolstack.WaitForBackendStateAsync(attachment, XenbusState.InitWait, HotplugScriptTimeout).ConfigureAwait(false);
                await _toolstack.WaitForBackendKeyAsync(attachment, BlkifKeys.DiskOpened, value => value == "1", DiskOpenTimeout).ConfigureAwait(false);
                using var store = hypervisor.OpenXenStore(hypervisor.Dom0);
                store.Write(XenStoreTransaction.None, attachment.BackendPath + "/" + BlkifKeys.HotplugStatus, "connected");
            }

            await connected.ConfigureAwait(false);
            NegotiatedFrontendFeatures negotiated = frontend.NegotiatedFrontendFeatures;
            SimulationLog.GuestAttached(_logger, name, domain.Id, target, GuestDeviceId, frontend.QueueCount,
                negotiated.PersistentGrants, negotiated.IndirectSegments);
            var guest = new Guest(name, domain, attachment, frontend);
            StartWorkload(guest, seed: (ulong)i + 1);
            _guests.Add(guest);
        }
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        foreach (Guest guest in _guests)
        {
            long operations = 0, verified = 0, mismatches = 0, errors = 0;
            for (int q = 0; q < guest.Runs.Count; q++)
            {
                try
                {
                    LoadGeneratorResult result = await guest.Runs[q].ConfigureAwait(false);
                    operations += result.Completions;
                    verified += result.BytesVerified;
                    mismatches += result.Mismatches;
                    errors += result.Errors + result.SubmitFailures;
                }
                catch (Exception e) when (e is InvalidOperationException or XenException)
                {
                    SimulationLog.GuestWorkloadFailed(_logger, guest.Name, e);
                }

                guest.Generators[q].Dispose();
            }

            SimulationLog.GuestDetached(_logger, guest.Name, operations, verified, mismatches, errors);
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
    /// One verifying workload per queue, each over its own part of the disk, one request at a time:
    /// each round writes a pattern derived from (sector, round) to 1..8 pages, reads it back into the
    /// poisoned pages and compares, flushes every <see cref="WritesPerFlush"/> rounds, then pauses.
    /// </summary>
    private void StartWorkload(Guest guest, ulong seed)
    {
        int queues = guest.Frontend.QueueCount;
        long share = (long)guest.Frontend.Sectors / queues;
        int reported = 0;
        for (int q = 0; q < queues; q++)
        {
            var generator = new FrontendLoadGenerator(guest.Frontend, new LoadGeneratorOptions
            {
                Queue = q,
                Depth = 1,
                FirstSector = q * share,
                SectorCount = share,
                Seed = seed,
                ReadPercent = 0,
                WritePercent = 100,
                ReadBackWrites = true,
                PagesPerRequest = MaxPagesPerRequest,
                VariableRequestSize = true,
                FlushEveryRounds = WritesPerFlush,
                PauseBetweenRounds = TimeSpan.FromMilliseconds(_settings.PauseMilliseconds),
                MismatchObserved = sector => SimulationLog.GuestMismatch(_logger, guest.Name, sector),
                ErrorObserved = status =>
                {
                    if (Interlocked.Exchange(ref reported, 1) == 0)
                    {
                        SimulationLog.GuestRequestFailed(_logger, guest.Name, status);
                    }
                },
            });
            guest.Generators.Add(generator);
            guest.Runs.Add(generator.RunVerifyingAsync(Timeout.InfiniteTimeSpan, _stop.Token));
        }
    }

    private sealed class Guest(string name, SimulatedDomain domain, DiskAttachment attachment, BlockFrontend frontend)
    {
        public string Name { get; } = name;

        public SimulatedDomain Domain { get; } = domain;

        public DiskAttachment Attachment { get; } = attachment;

        public BlockFrontend Frontend { get; } = frontend;

        public List<FrontendLoadGenerator> Generators { get; } = [];

        public List<Task<LoadGeneratorResult>> Runs { get; } = [];
    }
}
