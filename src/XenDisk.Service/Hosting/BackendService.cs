using System.Diagnostics;
using System.Reflection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using XenDisk.Backend.ControlPlane;

namespace XenDisk.Service.Hosting;

/// <summary>Who is running: shown by `xendisk status` and in systemd's STATUS line.</summary>
public sealed record ServiceIdentity(string Version, string Platform, bool Simulated, DateTimeOffset StartedAt)
{
    public static string AssemblyVersion =>
        typeof(ServiceIdentity).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0]
        ?? typeof(ServiceIdentity).Assembly.GetName().Version?.ToString()
        ?? "0";
}

/// <summary>One line describing the service, for systemd's STATUS=.</summary>
internal sealed class ServiceStatusText(ServiceIdentity identity, BlockBackend backend)
{
    public string Describe()
    {
        IReadOnlyList<DeviceStatus> devices = backend.Devices;
        int connected = devices.Count(d => d.State == XenDisk.Abi.XenbusState.Connected);
        return $"Serving {string.Join(",", backend.Options.Kinds)} on {identity.Platform}: {devices.Count} device(s), {connected} connected";
    }
}

/// <summary>
/// Runs the <see cref="BlockBackend"/> for the host's lifetime.
///
/// Graceful stop (SIGTERM, systemctl stop) is <see cref="BlockBackend.StopAsync"/>: the xenstore watches
/// are dropped, so no new device is taken; each ring stops taking requests, finishes the ones in flight
/// and answers them (the disk's own flush follows from the frontends' flush requests, and each disk is
/// closed, which flushes what the file system buffered); then rings are unmapped and event channels
/// unbound. xenstore is left as it was: frontends stay Connected with their rings granted, and the next
/// instance re-attaches to them, so a restart is a pause for the guest, not a disk removal.
/// </summary>
internal sealed class BackendService(BlockBackend backend, ILogger<BackendService> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        BackendOptions options = backend.Options;
        ServiceLog.BackendConfigured(logger, string.Join(",", options.Kinds), options.DataPlane.DataPath.ToString(),
            options.MaxQueues, options.MaxRingPageOrder, options.MaxIndirectSegments, options.PersistentGrants, options.Discard);
        return backend.StartAsync(cancellationToken);
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        ServiceLog.Draining(logger);
        // Counted before the stop: the backend forgets its devices as it releases them.
        int devices = backend.Devices.Count;
        long started = Stopwatch.GetTimestamp();
        await backend.StopAsync(cancellationToken).ConfigureAwait(false);
        ServiceLog.Stopped(logger, Stopwatch.GetElapsedTime(started).TotalSeconds, devices);
    }
}
