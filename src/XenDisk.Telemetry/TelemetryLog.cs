using Microsoft.Extensions.Logging;

namespace XenDisk.Telemetry;

/// <summary>Telemetry's log lines (event ids 3000-3099): start-up and failures, never one per scrape.</summary>
internal static partial class TelemetryLog
{
    [LoggerMessage(EventId = 3000, Level = LogLevel.Information, Message = "Prometheus metrics served at {Url}")]
    public static partial void PrometheusListening(ILogger logger, string url);

    [LoggerMessage(EventId = 3001, Level = LogLevel.Warning, Message = "A Prometheus scrape failed")]
    public static partial void ScrapeFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = 3002, Level = LogLevel.Debug, Message = "A metrics connection failed before it was accepted: {Reason}")]
    public static partial void PrometheusConnectionFailed(ILogger logger, string reason);
}
