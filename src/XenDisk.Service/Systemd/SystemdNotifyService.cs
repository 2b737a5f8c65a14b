using System.Globalization;
using System.Net.Sockets;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Hosting.Systemd;
using Microsoft.Extensions.Logging;
using XenDisk.Service.Hosting;

namespace XenDisk.Service.Systemd;

/// <summary>What systemd asked for: whether it listens for notifications, and how often to pet the watchdog.</summary>
/// <param name="Notify">$NOTIFY_SOCKET names a socket (a path, or @name in the abstract namespace): Type=notify.</param>
/// <param name="WatchdogTimeout">$WATCHDOG_USEC; null when WatchdogSec is not set.</param>
public sealed record SystemdSettings(bool Notify, TimeSpan? WatchdogTimeout)
{
    public static SystemdSettings None { get; } = new(false, null);

    public static SystemdSettings FromEnvironment() => new(
        Environment.GetEnvironmentVariable("NOTIFY_SOCKET") is { Length: > 0 } name && name[0] is '/' or '@',
        WatchdogTimeoutFromEnvironment());

    /// <summary>
    /// The interval systemd expects keep-alives at: $WATCHDOG_USEC, when set and $WATCHDOG_PID (if set)
    /// names this process (sd_watchdog_enabled(3)); null when the watchdog is off.
    /// </summary>
    public static TimeSpan? WatchdogTimeoutFromEnvironment()
    {
        string? pid = Environment.GetEnvironmentVariable("WATCHDOG_PID");
        if (!string.IsNullOrEmpty(pid) && pid != Environment.ProcessId.ToString(CultureInfo.InvariantCulture))
        {
            return null;
        }

        return ulong.TryParse(Environment.GetEnvironmentVariable("WATCHDOG_USEC"), NumberStyles.None, CultureInfo.InvariantCulture, out ulong microseconds) && microseconds > 0
            ? TimeSpan.FromMicroseconds(microseconds)
            : null;
    }
}

/// <summary>
/// What Microsoft.Extensions.Hosting.Systemd leaves to us. Its SystemdLifetime sends READY=1 when the
/// host has started (every hosted service: the backend watches xenstore, the control socket and the
/// metrics endpoint are up) and STOPPING=1 when shutdown begins; it sends no watchdog keep-alives and
/// no STATUS. This service adds STATUS= lines and WATCHDOG=1 at half the watchdog timeout
/// (sd_watchdog_enabled(3) recommends half) through the package's <see cref="ISystemdNotifier"/>,
/// for as long as the host runs, the drain at stop included. Registered only under systemd.
/// </summary>
internal sealed class SystemdNotifyService(
    SystemdSettings settings, ISystemdNotifier notifier, IHostApplicationLifetime lifetime, TimeProvider time,
    ILogger<SystemdNotifyService> logger, ServiceStatusText status) : IHostedService, IDisposable
{
    private static readonly ServiceState Watchdog = new("WATCHDOG=1");
    private static readonly ServiceState Draining = new("STATUS=Stopping: draining in-flight I/O");

    private ITimer? _watchdog;
    private CancellationTokenRegistration _started;
    private CancellationTokenRegistration _stopping;
    private int _warned;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        _started = lifetime.ApplicationStarted.Register(() =>
        {
            Send(new ServiceState("STATUS=" + status.Describe()));
            if (settings.WatchdogTimeout is { } timeout)
            {
                TimeSpan interval = timeout / 2;
                _watchdog = time.CreateTimer(_ => Send(Watchdog), null, interval, interval);
                ServiceLog.WatchdogEnabled(logger, interval.TotalSeconds);
            }
        });
        _stopping = lifetime.ApplicationStopping.Register(() => Send(Draining));
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken)
    {
        // Keep petting the watchdog while the backend drains (it stops after us): a slow drain must
        // not look like a hang. The timer is disposed with the service.
        return Task.CompletedTask;
    }

    public void Dispose()
    {
        _started.Dispose();
        _stopping.Dispose();
        _watchdog?.Dispose();
    }

    /// <summary>The package's notifier throws when the socket is gone; a service must not stop because
    /// its supervisor's socket went away, so the failure is logged once and later ones are skipped.</summary>
    private void Send(ServiceState state)
    {
        try
        {
            notifier.Notify(state);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
        {
            if (Interlocked.Exchange(ref _warned, 1) == 0)
            {
                ServiceLog.NotifyFailed(logger, e.Message);
            }
        }
    }
}
