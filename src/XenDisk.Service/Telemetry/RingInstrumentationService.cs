using Microsoft.Extensions.Hosting;
using XenDisk.Telemetry;

namespace XenDisk.Service.Telemetry;

/// <summary>
/// Offers the histograms' observer to every new ring (<see cref="XenDiskMetrics.AttachRings"/>) shortly
/// after it connects. The backend announces no ring, so this looks every <see cref="Interval"/>: a ring
/// that carried requests before it was seen replays them when it adopts the observer, so the interval
/// bounds only how much there is to replay, not what is counted. Runs only while a metrics exporter is
/// enabled; without one nothing listens to the histograms.
/// </summary>
internal sealed class RingInstrumentationService(XenDiskMetrics metrics, TimeProvider time) : IHostedService, IDisposable
{
    /// <summary>Short next to any scrape or export interval; a pass over the device list costs microseconds.</summary>
    public static readonly TimeSpan Interval = TimeSpan.FromMilliseconds(250);

    private ITimer? _timer;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        _timer = time.CreateTimer(_ => metrics.AttachRings(), null, TimeSpan.Zero, Interval);
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken)
    {
        _timer?.Dispose();
        _timer = null;
        return Task.CompletedTask;
    }

    public void Dispose() => _timer?.Dispose();
}
