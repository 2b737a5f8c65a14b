using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using XenDisk.Service.Hosting;

namespace XenDisk.Service.Systemd;

/// <summary>What systemd asked for: where to send notifications and how often to pet the watchdog.</summary>
/// <param name="NotifySocket">$NOTIFY_SOCKET; null when not run by systemd with Type=notify.</param>
/// <param name="WatchdogTimeout">$WATCHDOG_USEC; null when WatchdogSec is not set.</param>
public sealed record SystemdSettings(string? NotifySocket, TimeSpan? WatchdogTimeout)
{
    public static SystemdSettings FromEnvironment() => new(
        Environment.GetEnvironmentVariable("NOTIFY_SOCKET") is { Length: > 0 } name && name[0] is '/' or '@' ? name : null,
        SystemdNotifier.WatchdogTimeoutFromEnvironment());
}

/// <summary>
/// Type=notify: READY=1 once every hosted service started (the backend is watching xenstore, the
/// control socket and metrics endpoint are up); STOPPING=1 as soon as shutdown begins; WATCHDOG=1 at
/// half the watchdog timeout (sd_watchdog_enabled(3) recommends half), for as long as the host runs.
/// Does nothing when not started by systemd.
/// </summary>
internal sealed class SystemdNotifyService : IHostedService, IDisposable
{
    private readonly SystemdSettings _settings;
    private readonly IHostApplicationLifetime _lifetime;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private readonly Func<string> _status;
    private SystemdNotifier? _notifier;
    private ITimer? _watchdog;
    private CancellationTokenRegistration _started;
    private CancellationTokenRegistration _stopping;
    private bool _warned;

    public SystemdNotifyService(SystemdSettings settings, IHostApplicationLifetime lifetime, TimeProvider time, ILogger<SystemdNotifyService> logger, ServiceStatusText status)
    {
        _settings = settings;
        _lifetime = lifetime;
        _time = time;
        _logger = logger;
        _status = status.Describe;
    }

    public Task StartAsync(CancellationToken cancellationToken)
    {
        if (_settings.NotifySocket is null)
        {
            return Task.CompletedTask;
        }

        _notifier = new SystemdNotifier(_settings.NotifySocket);
        _started = _lifetime.ApplicationStarted.Register(() =>
        {
            Send("READY=1\nSTATUS=" + _status());
            if (_settings.WatchdogTimeout is { } timeout)
            {
                TimeSpan interval = timeout / 2;
                _watchdog = _time.CreateTimer(_ => Send("WATCHDOG=1"), null, interval, interval);
                ServiceLog.WatchdogEnabled(_logger, interval.TotalSeconds);
            }
        });
        _stopping = _lifetime.ApplicationStopping.Register(() => Send("STOPPING=1\nSTATUS=Stopping: draining in-flight I/O"));
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
        _notifier?.Dispose();
    }

    private void Send(string state)
    {
        if (_notifier is not null && !_notifier.Notify(state) && !_warned)
        {
            _warned = true;
            ServiceLog.NotifyFailed(_logger, _notifier.SocketName);
        }
    }
}
