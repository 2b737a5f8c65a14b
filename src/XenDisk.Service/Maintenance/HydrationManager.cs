using System.Globalization;
using Microsoft.Extensions.Logging;
using XenDisk.Backend.ControlPlane;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Overlays;
using XenDisk.Cow.Storage;
using XenDisk.Service.Control;
using XenDisk.Storage;

namespace XenDisk.Service.Maintenance;

/// <summary>What a hydrate or hydrate-cancel request came to: the device and its hydration, or why it was refused.</summary>
internal sealed record HydrationOutcome(string? BackendPath, HydrationReport? Report, string? Refusal)
{
    public static HydrationOutcome Refused(string reason) => new(null, null, reason);
}

/// <summary>
/// Online hydration of attached devices' overlays, for the control socket's hydrate and
/// hydrate-cancel commands: at most one run per device, each on a thread of its own that the
/// device owns (<see cref="BlockBackend.StartDiskMaintenanceAsync"/>), so neither the control socket
/// nor a ring thread ever copies, and the device stops the run before it closes the disk. The copy
/// itself is the engine's online hydration, beside the guest's I/O and through its write path
/// (<see cref="IOverlayImage.Hydrate"/>), which also records that
/// the overlay no longer needs its base (a qcow2 header without a backing file, a bitmap header
/// with the STANDALONE flag). Resumable: a cancelled or stopped run keeps what it copied, and the
/// next run skips it.
/// <para>
/// A device's last run stays visible in `xendisk status` until the disk it ran on closes.
/// </para>
/// </summary>
internal sealed class HydrationManager(BlockBackend backend, TimeProvider time, ILogger<HydrationManager> logger)
{
    /// <summary>
    /// How long hydrate-cancel waits for the run to stop, so that its answer normally shows it
    /// stopped: the engines notice a cancel between two steps (a cluster, 256 grains) or within
    /// 250 ms of a throttled pause, then write their metadata back.
    /// </summary>
    internal static readonly TimeSpan CancelWait = TimeSpan.FromSeconds(3);

    private readonly Lock _gate = new();
    private readonly Dictionary<string, HydrationRun> _runs = new(StringComparer.Ordinal);

    /// <summary>The device's hydration, or null when none ran on its disk as it is open now.</summary>
    public HydrationReport? Report(string backendPath)
    {
        lock (_gate)
        {
            return _runs.TryGetValue(backendPath, out HydrationRun? run) ? run.Report() : null;
        }
    }

    public async Task<HydrationOutcome> StartAsync(string? device, long bytesPerSecond, CancellationToken cancellationToken)
    {
        if (bytesPerSecond < 0)
        {
            return HydrationOutcome.Refused("bytesPerSecond must be positive, or 0 for no limit.");
        }

        if (!TryResolve(device, out string path, out string? refusal))
        {
            return HydrationOutcome.Refused(refusal!);
        }

        var run = new HydrationRun(path, bytesPerSecond, time.GetUtcNow());
        HydrationRun? previous;
        lock (_gate)
        {
            if (_runs.TryGetValue(path, out previous) && previous.IsRunning)
            {
                HydrationReport running = previous.Report();
                return HydrationOutcome.Refused(
                    $"{path}: a hydration is already running ({Progress(running)}); cancel it first (xendisk hydrate {device} --cancel).");
            }

            // Holds the device's one place while the disk is looked at, so a second request waits its turn.
            _runs[path] = run;
        }

        string? declined = null;
        Task? work;
        try
        {
            work = await backend.StartDiskMaintenanceAsync(path, disk =>
            {
                Action<CancellationToken>? hydrate = Prepare(run, disk, out string? why);
                declined = why;
                return hydrate;
            }, cancellationToken).ConfigureAwait(false);
        }
        catch (KeyNotFoundException)
        {
            work = null;
            declined = $"The device {path} is gone.";
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            work = null;
            declined = $"{path} is busy (its control work did not finish in time); try again.";
        }

        if (work is null)
        {
            lock (_gate)
            {
                if (_runs.TryGetValue(path, out HydrationRun? current) && ReferenceEquals(current, run))
                {
                    if (previous is not null)
                    {
                        _runs[path] = previous;
                    }
                    else
                    {
                        _runs.Remove(path);
                    }
                }
            }

            return HydrationOutcome.Refused(declined ?? $"{path} has no open disk (it is not set up, or its setup failed: xendisk status shows its error).");
        }

        previous?.DiskClosing.Dispose();
        return new HydrationOutcome(path, run.Report(), null);
    }

    public async Task<HydrationOutcome> CancelAsync(string? device, CancellationToken cancellationToken)
    {
        if (!TryResolve(device, out string path, out string? refusal))
        {
            return HydrationOutcome.Refused(refusal!);
        }

        HydrationRun? run;
        lock (_gate)
        {
            _runs.TryGetValue(path, out run);
        }

        if (run is null || !run.IsRunning)
        {
            return HydrationOutcome.Refused(run is null
                ? $"No hydration is running on {path}."
                : $"No hydration is running on {path} (the last one {run.Report().State}).");
        }

        run.RequestCancel();
        try
        {
            await run.Ended.WaitAsync(CancelWait, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is TimeoutException or OperationCanceledException)
        {
            // Still writing its metadata back: the answer shows it running, and status shows it stop.
        }

        return new HydrationOutcome(path, run.Report(), null);
    }

    /// <summary>Turns a device name into the backend path of a device this backend serves.</summary>
    private bool TryResolve(string? device, out string backendPath, out string? refusal)
    {
        backendPath = "";
        if (!DeviceSelector.TryParse(device, out DeviceSelector? selector, out refusal))
        {
            return false;
        }

        string? found = selector!.FindIn(backend);
        if (found is null)
        {
            refusal = $"No device {selector} is served by this xendisk (xendisk status lists its devices).";
            return false;
        }

        backendPath = found;
        return true;
    }

    /// <summary>
    /// Runs under the device's control lock with its open disk: refuses what cannot be hydrated, or
    /// returns the work. Nothing here blocks.
    /// </summary>
    private Action<CancellationToken>? Prepare(HydrationRun run, IBlockDevice disk, out string? refusal)
    {
        string path = run.BackendPath;
        refusal = null;
        if (disk.Info.ReadOnly)
        {
            refusal = $"{path} is attached read-only; hydration writes into its overlay.";
            return null;
        }

        switch (disk)
        {
            case IOverlayImage { Policy: MetadataPolicy.Transient }:
                refusal = $"{path} has a transient overlay (policy=transient), which is deleted when the disk closes: there is nothing to keep by hydrating it.";
                return null;
            case IOverlayImage overlay:
                run.Image = overlay.ImageName;
                run.Begin(overlay.Info.SizeBytes);
                return closing => Run(run, closing, stop =>
                {
                    OverlayOperationResult result = overlay.Hydrate(new OverlayHydrateOptions
                    {
                        BytesPerSecond = run.BytesPerSecond,
                        Progress = p => run.Progress(p.BytesExamined, p.BytesTotal, p.BytesCopied),
                    }, stop);
                    return result.Succeeded ? (result.BytesCopied, null) : (null, result.Error ?? result.Status.Describe());
                });
            case RawBlockDevice:
                refusal = $"{path} is a raw disk ({disk.Info.Description}): it has no base to copy from. Only qcow2 and bitmap overlays can be hydrated.";
                return null;
            default:
                // Transient overlays on files come wrapped in the device that deletes the file at close.
                refusal = $"{path}: its disk ({disk.Info.Description}) is not a qcow2 or bitmap overlay that can be hydrated "
                    + "(a raw disk has no base to copy from, and a transient overlay is deleted when the disk closes).";
                return null;
        }
    }

    /// <summary>The run, on its own thread. <paramref name="diskClosing"/> fires when the device closes the disk.</summary>
    private void Run(HydrationRun run, CancellationToken diskClosing, Func<CancellationToken, (long? Copied, string? Error)> hydrate)
    {
        string path = run.BackendPath;

        // The record belongs to the disk as it is open: when it closes, the run (stopped first) is forgotten.
        run.DiskClosing = diskClosing.Register(() => Forget(run));
        using CancellationTokenSource stop = CancellationTokenSource.CreateLinkedTokenSource(diskClosing, run.CancelToken);
        ServiceLog.HydrationStarted(logger, path, run.Image, run.BytesPerSecond > 0
            ? string.Create(CultureInfo.InvariantCulture, $"at most {run.BytesPerSecond} bytes/s from the base")
            : "no rate limit");
        try
        {
            (long? copied, string? error) = hydrate(stop.Token);
            if (error is null)
            {
                // Logged before the state changes, so whoever sees the run finished also finds its log line.
                DateTimeOffset now = time.GetUtcNow();
                ServiceLog.HydrationFinished(logger, path, (now - run.StartedAt).TotalSeconds, copied ?? 0);
                run.Finish(copied, now);
            }
            else
            {
                string message = error + "; what was copied is kept: start it again to resume";
                ServiceLog.HydrationFailed(logger, path, message);
                run.Fail(message, time.GetUtcNow());
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            string? reason = run.CancelRequested ? null : "stopped because the disk closed (the device was removed, or the service is stopping)";
            HydrationReport stopped = run.Report();
            ServiceLog.HydrationCancelled(logger, path, stopped.BytesDone, stopped.BytesTotal, reason ?? "on request");
            run.Cancelled(reason, time.GetUtcNow());
        }
        catch (Exception e)
        {
            // The guest's disk is not harmed by a failed copy; the run fails visibly, the device serves on.
            ServiceLog.HydrationCrashed(logger, path, e);
            run.Fail($"internal error: {e.GetType().Name}: {e.Message}", time.GetUtcNow());
        }
    }

    private void Forget(HydrationRun run)
    {
        lock (_gate)
        {
            if (_runs.TryGetValue(run.BackendPath, out HydrationRun? current) && ReferenceEquals(current, run))
            {
                _runs.Remove(run.BackendPath);
            }
        }
    }

    internal static string Progress(HydrationReport report) =>
        report.BytesTotal > 0
            ? string.Create(CultureInfo.InvariantCulture, $"{report.BytesDone} of {report.BytesTotal} bytes, {100.0 * report.BytesDone / report.BytesTotal:0.0}%")
            : "starting";
}
