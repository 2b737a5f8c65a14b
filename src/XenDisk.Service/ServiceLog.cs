using Microsoft.Extensions.Logging;

namespace XenDisk.Service;

/// <summary>
/// The service host's log lines (event ids 4000-4099). One line per lifecycle event of the service,
/// its endpoints and its hydrations (the simulated guests log through SimulationLog); devices log their own lifecycle (ControlPlaneLog), and
/// nothing logs per request.
/// </summary>
internal static partial class ServiceLog
{
    [LoggerMessage(EventId = 4000, Level = LogLevel.Information, Message = "xendisk {Version} starting on {Platform}; configuration {ConfigPath}")]
    public static partial void Starting(ILogger logger, string version, string platform, string configPath);

    [LoggerMessage(EventId = 4004, Level = LogLevel.Information, Message = "xendisk {Version} starting on {Platform}; {ConfigPath} does not exist, so the built-in defaults apply (with any XENDISK_* variables)")]
    public static partial void StartingWithDefaults(ILogger logger, string version, string platform, string configPath);

    [LoggerMessage(EventId = 4001, Level = LogLevel.Information, Message = "Backend serving kinds {Kinds}; data path {DataPath}, max {MaxQueues} queues, ring order {MaxRingPageOrder}, {MaxIndirectSegments} indirect segments, persistent grants {PersistentGrants}, discard {Discard}")]
    public static partial void BackendConfigured(ILogger logger, string kinds, string dataPath, int maxQueues, int maxRingPageOrder, int maxIndirectSegments, bool persistentGrants, bool discard);

    [LoggerMessage(EventId = 4002, Level = LogLevel.Information, Message = "Stopping: no new requests are taken; in-flight I/O is finished and flushed, and frontends stay connected for the next instance")]
    public static partial void Draining(ILogger logger);

    [LoggerMessage(EventId = 4003, Level = LogLevel.Information, Message = "Backend stopped after {Seconds:F1} s; {DeviceCount} device(s) released, xenstore left for the next instance")]
    public static partial void Stopped(ILogger logger, double seconds, int deviceCount);

    [LoggerMessage(EventId = 4010, Level = LogLevel.Information, Message = "Control socket listening at {Path}")]
    public static partial void ControlListening(ILogger logger, string path);

    [LoggerMessage(EventId = 4011, Level = LogLevel.Warning, Message = "Removed a stale control socket at {Path} (no instance was listening on it)")]
    public static partial void StaleControlSocket(ILogger logger, string path);

    [LoggerMessage(EventId = 4012, Level = LogLevel.Warning, Message = "A control request failed: {Reason}")]
    public static partial void ControlRequestFailed(ILogger logger, string reason);

    [LoggerMessage(EventId = 4020, Level = LogLevel.Information, Message = "systemd watchdog: WATCHDOG=1 every {Seconds:F1} s")]
    public static partial void WatchdogEnabled(ILogger logger, double seconds);

    [LoggerMessage(EventId = 4021, Level = LogLevel.Warning, Message = "Cannot notify systemd ({Reason}); later failures are not logged")]
    public static partial void NotifyFailed(ILogger logger, string reason);

    [LoggerMessage(EventId = 4031, Level = LogLevel.Information, Message = "Prometheus metrics served at {Url}")]
    public static partial void PrometheusListening(ILogger logger, string url);

    [LoggerMessage(EventId = 4030, Level = LogLevel.Information, Message = "OTLP metrics export to {Endpoint} ({Protocol}) every {Seconds} s")]
    public static partial void OtlpExporting(ILogger logger, string endpoint, string protocol, int seconds);

    [LoggerMessage(EventId = 4050, Level = LogLevel.Information, Message = "{Device}: hydrating {Image} online ({Limit})")]
    public static partial void HydrationStarted(ILogger logger, string device, string image, string limit);

    [LoggerMessage(EventId = 4051, Level = LogLevel.Information, Message = "{Device}: hydration finished after {Seconds:F1} s ({BytesCopied} bytes copied); the overlay no longer needs its base")]
    public static partial void HydrationFinished(ILogger logger, string device, double seconds, long bytesCopied);

    [LoggerMessage(EventId = 4052, Level = LogLevel.Error, Message = "{Device}: hydration failed: {Error}")]
    public static partial void HydrationFailed(ILogger logger, string device, string error);

    [LoggerMessage(EventId = 4053, Level = LogLevel.Information, Message = "{Device}: hydration cancelled at {BytesDone} of {BytesTotal} bytes ({Reason}); starting it again resumes it")]
    public static partial void HydrationCancelled(ILogger logger, string device, long bytesDone, long bytesTotal, string reason);

    [LoggerMessage(EventId = 4054, Level = LogLevel.Error, Message = "{Device}: hydration failed with an internal error; the device serves on")]
    public static partial void HydrationCrashed(ILogger logger, string device, Exception exception);
}
