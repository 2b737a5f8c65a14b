using Microsoft.Extensions.Logging;

namespace XenDisk.Service.Simulation;

/// <summary>The demo guests' log lines (event ids 4040-4049, within the service host's range).</summary>
internal static partial class SimulationLog
{
    [LoggerMessage(EventId = 4040, Level = LogLevel.Information, Message = "Simulated guest {Guest} (domain {DomainId}) attached {Disk} as device {DeviceId}: {Queues} queue(s), persistent grants {Persistent}, indirect segments {Indirect}")]
    public static partial void GuestAttached(ILogger logger, string guest, uint domainId, string disk, int deviceId, int queues, bool persistent, int indirect);

    [LoggerMessage(EventId = 4041, Level = LogLevel.Information, Message = "Simulated guest {Guest} detached: {Operations} verified operations, {Bytes} bytes checked, {Mismatches} mismatches, {Errors} errors")]
    public static partial void GuestDetached(ILogger logger, string guest, long operations, long bytes, long mismatches, long errors);

    [LoggerMessage(EventId = 4042, Level = LogLevel.Error, Message = "Simulated guest {Guest}: data read back at sector {Sector} differs from what was written")]
    public static partial void GuestMismatch(ILogger logger, string guest, long sector);

    [LoggerMessage(EventId = 4043, Level = LogLevel.Error, Message = "Simulated guest {Guest}: workload failed")]
    public static partial void GuestWorkloadFailed(ILogger logger, string guest, Exception exception);

    [LoggerMessage(EventId = 4044, Level = LogLevel.Warning, Message = "Simulated guest {Guest}: request failed with status {Status}; further failures are counted, not logged")]
    public static partial void GuestRequestFailed(ILogger logger, string guest, int status);
}
