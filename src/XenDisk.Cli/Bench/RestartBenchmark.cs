using System.Diagnostics;
using System.Globalization;
using Microsoft.Extensions.Logging;
using XenDisk.Abi;
using XenDisk.Backend.ControlPlane;
using XenDisk.Storage;
using XenDisk.TestFrontend;
using XenDisk.Xen.Simulated;
using static System.FormattableString;

namespace XenDisk.Cli.Bench;

internal sealed record RestartBenchSettings(int Guests, int NewDevices, int Rounds, long SizeBytes, string? Directory, TimeSpan OpenDelay);

/// <summary>One round: how long each new device took to reach InitWait and to have its disk open, and the old guests to be connected again.</summary>
internal sealed record RestartBenchRound(double[] NewDeviceInitWaitMilliseconds, double[] NewDeviceDiskOpenedMilliseconds, double OldGuestsConnectedMilliseconds, long OldGuestErrors);

/// <summary>
/// A restart under load, as issue 13's soak run met it: guests on qcow2 overlays (made by qemu-img over
/// one raw base) run a verified 4 KiB read/write load; the backend stops and a new instance starts,
/// and while it opens and reconnects the old guests' disks the toolstack attaches new devices (a
/// block-attach, a rebooted guest's disk). Measured: the time from each new device's creation in
/// xenstore to the backend's InitWait (libxl fails the device after 10 s) and to its disk-opened marker
/// (what the hotplug script waits for, within libxl's 40 s), and from the new instance's
/// start until every old guest is connected again. The simulated hypervisor stands in for Xen only.
/// </summary>
internal static class RestartBenchmark
{
    private const int DeviceId = 51712;
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    public static async Task<IReadOnlyList<RestartBenchRound>> RunAsync(RestartBenchSettings settings, ILoggerFactory loggerFactory, Action<string> progress, CancellationToken cancellationToken)
    {
        string root = Path.Combine(settings.Directory ?? "/var/tmp", "xendisk-bench-restart-" + Environment.ProcessId.ToString(CultureInfo.InvariantCulture));
        System.IO.Directory.CreateDirectory(root);
        try
        {
            string qemuImg = ProcessRunner.Find("qemu-img") ?? throw new InvalidOperationException("qemu-img is not installed (Debian package qemu-utils)");
            string baseFile = Path.Combine(root, "base.raw");
            QemuImg(qemuImg, "create", "-q", "-f", "raw", baseFile, settings.SizeBytes.ToString(CultureInfo.InvariantCulture));
            var rounds = new List<RestartBenchRound>();
            for (int round = 0; round < settings.Rounds; round++)
            {
                string directory = System.IO.Directory.CreateDirectory(Path.Combine(root, "round" + round)).FullName;
                foreach (string name in Enumerable.Range(0, settings.Guests).Select(i => "old" + i).Concat(Enumerable.Range(0, settings.NewDevices).Select(i => "new" + i)))
                {
                    QemuImg(qemuImg, "create", "-q", "-f", "qcow2", "-b", baseFile, "-F", "raw", Path.Combine(directory, name + ".qcow2"));
                }

                RestartBenchRound result = await RunRoundAsync(settings, directory, baseFile, loggerFactory, cancellationToken).ConfigureAwait(false);
                progress(Invariant($"round {round + 1}: new devices to InitWait {string.Join(", ", result.NewDeviceInitWaitMilliseconds.Select(m => m.ToString("F0", CultureInfo.InvariantCulture)))} ms, to disk opened {string.Join(", ", result.NewDeviceDiskOpenedMilliseconds.Select(m => m.ToString("F0", CultureInfo.InvariantCulture)))} ms; old guests connected after {result.OldGuestsConnectedMilliseconds:F0} ms"));
                rounds.Add(result);
            }

            return rounds;
        }
        finally
        {
            System.IO.Directory.Delete(root, recursive: true);
        }
    }

    public static void WriteText(TextWriter writer, RestartBenchSettings settings, IReadOnlyList<RestartBenchRound> rounds)
    {
        double[] all = [.. rounds.SelectMany(r => r.NewDeviceInitWaitMilliseconds).Order()];
        double[] connected = [.. rounds.Select(r => r.OldGuestsConnectedMilliseconds).Order()];
        writer.WriteLine(Invariant($"restart bench: {settings.Guests} guests on qcow2 overlays under load (their opens delayed {settings.OpenDelay.TotalMilliseconds:F0} ms), {settings.NewDevices} new devices attached as the new instance starts, {rounds.Count} rounds, load average {File.ReadAllText("/proc/loadavg").Split(' ')[0]}"));
        writer.WriteLine(Invariant($"  new device, creation to InitWait: median {Percentile(all, 0.5):F0} ms, max {all[^1]:F0} ms ({all.Length} devices)"));
        double[] opened = [.. rounds.SelectMany(r => r.NewDeviceDiskOpenedMilliseconds).Order()];
        writer.WriteLine(Invariant($"  new device, creation to disk opened: median {Percentile(opened, 0.5):F0} ms, max {opened[^1]:F0} ms"));
        writer.WriteLine(Invariant($"  old guests connected again after the start: median {Percentile(connected, 0.5):F0} ms, max {connected[^1]:F0} ms"));
        writer.WriteLine(Invariant($"  guest I/O errors: {rounds.Sum(r => r.OldGuestErrors)}"));
    }

    private static double Percentile(double[] sorted, double p) => sorted[(int)Math.Min(sorted.Length - 1, Math.Floor(p * sorted.Length))];

    private static async Task<RestartBenchRound> RunRoundAsync(RestartBenchSettings settings, string directory, string baseFile, ILoggerFactory loggerFactory, CancellationToken cancellationToken)
    {
        using var hypervisor = new SimulatedHypervisor();
        using var toolstack = new SimulatedToolstack(hypervisor);
        var provider = new OverlayProvider(baseFile, settings.OpenDelay);
        var options = new BackendOptions { MaxQueues = 2, InflightDirectory = directory };
        var backend = new BlockBackend(hypervisor.Platform(hypervisor.Dom0), provider, options, loggerFactory);
        await backend.StartAsync(cancellationToken).ConfigureAwait(false);

        var frontends = new List<BlockFrontend>();
        var loads = new List<(FrontendLoadGenerator Generator, Task<LoadGeneratorResult> Run)>();
        long errors = 0;
        using var stopLoad = new CancellationTokenSource();
        try
        {
            for (int i = 0; i < settings.Guests; i++)
            {
                SimulatedDomain guest = hypervisor.CreateDomain("old" + i, memoryPages: 8192);
                DiskAttachment attachment = toolstack.AttachDisk(guest, DeviceId, Path.Combine(directory, $"old{i}.qcow2"), readOnly: false);
                var frontend = new BlockFrontend(hypervisor, guest, attachment, new FrontendOptions { Queues = 2, StateTimeout = Patience });
                frontends.Add(frontend);
                await frontend.ConnectAsync(cancellationToken).ConfigureAwait(false);
                for (int queue = 0; queue < 2; queue++)
                {
                    var generator = new FrontendLoadGenerator(frontend, new LoadGeneratorOptions
                    {
                        Queue = queue,
                        Depth = 8,
                        ReadPercent = 50,
                        WritePercent = 50,
                        SectorCount = Math.Min(settings.SizeBytes, 64L << 20) / BlkifLimits.SectorSize / 2,
                        FirstSector = queue * (Math.Min(settings.SizeBytes, 64L << 20) / BlkifLimits.SectorSize / 2),
                        Seed = (ulong)(i * 2 + queue + 1),
                        ReadBackWrites = true,
                        ErrorObserved = _ => Interlocked.Increment(ref errors),
                        MismatchObserved = _ => Interlocked.Increment(ref errors),
                    });
                    loads.Add((generator, generator.RunVerifyingAsync(Timeout.InfiniteTimeSpan, stopLoad.Token)));
                }
            }

            await Task.Delay(TimeSpan.FromSeconds(1), cancellationToken).ConfigureAwait(false);
            await backend.StopAsync(cancellationToken).ConfigureAwait(false);

            // The new instance, and the toolstack adding devices while it comes up.
            backend = new BlockBackend(hypervisor.Platform(hypervisor.Dom0), provider, options, loggerFactory);
            long started = Stopwatch.GetTimestamp();
            await backend.StartAsync(cancellationToken).ConfigureAwait(false);
            var waits = new List<Task<(double InitWait, double DiskOpened)>>();
            for (int i = 0; i < settings.NewDevices; i++)
            {
                SimulatedDomain guest = hypervisor.CreateDomain("new" + i, memoryPages: 1024);
                long created = Stopwatch.GetTimestamp();
                DiskAttachment attachment = toolstack.AttachDisk(guest, DeviceId, Path.Combine(directory, $"new{i}.qcow2"), readOnly: false);
                waits.Add(WaitForNewDeviceAsync(toolstack, attachment, created));
            }

            while (hypervisor.Domains.Where(d => d.Name.StartsWith("old", StringComparison.Ordinal))
                .Any(d => backend.FindDevice(d.Id, DeviceId)?.State != XenbusState.Connected))
            {
                if (Stopwatch.GetElapsedTime(started) > Patience)
                {
                    throw new TimeoutException("The old guests were not connected again within " + Patience);
                }

                await Task.Delay(5, cancellationToken).ConfigureAwait(false);
            }

            double connectedMilliseconds = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
            (double InitWait, double DiskOpened)[] newDevices = await Task.WhenAll(waits).ConfigureAwait(false);

            // Some verified I/O after the restart, then the load stops.
            await Task.Delay(TimeSpan.FromSeconds(1), cancellationToken).ConfigureAwait(false);
            await stopLoad.CancelAsync().ConfigureAwait(false);
            foreach ((FrontendLoadGenerator generator, Task<LoadGeneratorResult> run) in loads)
            {
                try
                {
                    await run.ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                }

                generator.Dispose();
            }

            return new RestartBenchRound([.. newDevices.Select(d => d.InitWait)], [.. newDevices.Select(d => d.DiskOpened)], connectedMilliseconds, Interlocked.Read(ref errors));
        }
        finally
        {
            await stopLoad.CancelAsync().ConfigureAwait(false);
            foreach (BlockFrontend frontend in frontends)
            {
                await frontend.DisposeAsync().ConfigureAwait(false);
            }

            await backend.DisposeAsync().ConfigureAwait(false);
        }
    }

    private static async Task<(double InitWait, double DiskOpened)> WaitForNewDeviceAsync(SimulatedToolstack toolstack, DiskAttachment attachment, long created)
    {
        await toolstack.WaitForBackendStateAsync(attachment, XenbusState.InitWait, Patience).ConfigureAwait(false);
        double initWait = Stopwatch.GetElapsedTime(created).TotalMilliseconds;
        await toolstack.WaitForBackendKeyAsync(attachment, BlkifKeys.DiskOpened, value => value == "1", Patience).ConfigureAwait(false);
        return (initWait, Stopwatch.GetElapsedTime(created).TotalMilliseconds);
    }

    private static void QemuImg(string qemuImg, params string[] args)
    {
        (int exit, _, string error) = ProcessRunner.Run(qemuImg, args);
        if (exit != 0)
        {
            throw new InvalidOperationException($"qemu-img {args[0]} failed: {error.Trim()}");
        }
    }

    /// <summary>
    /// Each target is a qcow2 overlay over the round's base, opened as the service opens it (O_DIRECT).
    /// With an open delay, the open of an old guest's overlay (the ones a restart re-opens) takes that
    /// much longer, as on a host where reading an image's metadata is slow (a loaded, emulated dom0;
    /// a busy or remote disk); new devices' opens are not delayed.
    /// </summary>
    private sealed class OverlayProvider(string baseFile, TimeSpan openDelay) : IDiskProvider
    {
        public IBlockDevice Open(DiskSpecification specification)
        {
            if (openDelay > TimeSpan.Zero && Path.GetFileName(specification.Target).StartsWith("old", StringComparison.Ordinal))
            {
                Thread.Sleep(openDelay);
            }

            return XenDisk.Cow.Qcow2.Qcow2Disk.Open(specification.Target, new XenDisk.Cow.Qcow2.Qcow2OpenOptions
            {
                ReadOnly = specification.ReadOnly,
                BackingPolicy = XenDisk.Cow.Policies.BackingFilePolicy.InDirectories(Path.GetDirectoryName(baseFile)!),
            });
        }
    }
}
