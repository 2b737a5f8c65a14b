using Microsoft.Extensions.Logging;
using XenDisk.Abi;

namespace XenDisk.Backend.ControlPlane;

/// <summary>
/// The control plane's log lines: one per lifecycle event of the backend or of a device, never one
/// per request. Event ids are stable (1000-1099 belong to the control plane) so that operators can
/// filter and alert on them.
/// </summary>
internal static partial class ControlPlaneLog
{
    [LoggerMessage(EventId = 1000, Level = LogLevel.Information, Message = "Block backend started as domain {DomainId} on {Platform}, serving {Kinds}{Filter}")]
    public static partial void BackendStarted(ILogger logger, string platform, uint domainId, string kinds, string filter);

    [LoggerMessage(EventId = 1001, Level = LogLevel.Information, Message = "Block backend stopped; {DeviceCount} device(s) released, xenstore left for the next instance")]
    public static partial void BackendStopped(ILogger logger, int deviceCount);

    [LoggerMessage(EventId = 1002, Level = LogLevel.Information, Message = "{Device}: discovered (frontend domain {FrontendDomainId}, device {DeviceId})")]
    public static partial void DeviceDiscovered(ILogger logger, string device, uint frontendDomainId, int deviceId);

    [LoggerMessage(EventId = 1003, Level = LogLevel.Information, Message = "{Device}: left to another backend (script \"{Script}\" is not {Filter})")]
    public static partial void DeviceIgnored(ILogger logger, string device, string script, string filter);

    // Timings in milliseconds since the device was discovered (the watch event that created it, or
    // the start of a later setup), so that a slow InitWait shows which phase took the time.
    [LoggerMessage(EventId = 1004, Level = LogLevel.Information, Message = "{Device}: waiting for the frontend (InitWait) {TotalMs:0.0} ms after discovery (queued {QueuedMs:0.0} ms, toolstack keys {KeysMs:0.0} ms, commit {CommitMs:0.0} ms); opening the disk")]
    public static partial void DeviceInitWait(ILogger logger, string device, double totalMs, double queuedMs, double keysMs, double commitMs);

    [LoggerMessage(EventId = 1028, Level = LogLevel.Information, Message = "{Device}: disk open ({Disk}, {Sectors} sectors of 512 bytes, {Access}) {TotalMs:0.0} ms after discovery (InitWait at {InitWaitMs:0.0} ms, open {OpenMs:0.0} ms, pick-up {PickUpMs:0.0} ms, commit {CommitMs:0.0} ms)")]
    public static partial void DiskOpened(ILogger logger, string device, string disk, ulong sectors, string access, double totalMs, double initWaitMs, double openMs, double pickUpMs, double commitMs);

    [LoggerMessage(EventId = 1005, Level = LogLevel.Information, Message = "{Device}: connected: {Queues} queue(s) of {RingPages} ring page(s), {Protocol}, persistent grants {Persistent}, indirect segments {IndirectSegments}")]
    public static partial void DeviceConnected(ILogger logger, string device, int queues, int ringPages, string protocol, bool persistent, int indirectSegments);

    [LoggerMessage(EventId = 1006, Level = LogLevel.Information, Message = "{Device}: disconnected ({Reason})")]
    public static partial void DeviceDisconnected(ILogger logger, string device, string reason);

    [LoggerMessage(EventId = 1007, Level = LogLevel.Information, Message = "{Device}: state {State}")]
    public static partial void DeviceStateChanged(ILogger logger, string device, XenbusState state);

    [LoggerMessage(EventId = 1008, Level = LogLevel.Warning, Message = "{Device}: failed and closed: {Reason}")]
    public static partial void DeviceFailed(ILogger logger, string device, string reason, Exception? exception);

    [LoggerMessage(EventId = 1009, Level = LogLevel.Information, Message = "{Device}: removed from xenstore; disk closed and device forgotten")]
    public static partial void DeviceRemoved(ILogger logger, string device);

    [LoggerMessage(EventId = 1010, Level = LogLevel.Error, Message = "{Device}: queue {Queue} stopped on its own ({Cause})")]
    public static partial void RingStoppedUnexpectedly(ILogger logger, string device, int queue, string cause, Exception? exception);

    [LoggerMessage(EventId = 1011, Level = LogLevel.Information, Message = "{Device}: resized from {OldSectors} to {NewSectors} sectors")]
    public static partial void DeviceResized(ILogger logger, string device, ulong oldSectors, ulong newSectors);

    [LoggerMessage(EventId = 1026, Level = LogLevel.Warning, Message = "{Device}: could not check the disk's size for an online resize")]
    public static partial void SizeCheckFailed(ILogger logger, string device, Exception exception);

    [LoggerMessage(EventId = 1012, Level = LogLevel.Information, Message = "{Device}: frontend re-initialising after close; preparing for reconnect (InitWait)")]
    public static partial void DeviceReconnecting(ILogger logger, string device);

    [LoggerMessage(EventId = 1013, Level = LogLevel.Warning, Message = "{Device}: ignoring frontend state {State}")]
    public static partial void UnexpectedFrontendState(ILogger logger, string device, XenbusState state);

    [LoggerMessage(EventId = 1014, Level = LogLevel.Error, Message = "{Device}: queue {Queue} did not finish its in-flight I/O within {Timeout}; its ring mapping and event channel are left in place")]
    public static partial void RingDrainTimedOut(ILogger logger, string device, int queue, TimeSpan timeout);

    [LoggerMessage(EventId = 1015, Level = LogLevel.Error, Message = "{Device}: releasing {Resource} failed")]
    public static partial void ReleaseFailed(ILogger logger, string device, string resource, Exception? exception);

    [LoggerMessage(EventId = 1016, Level = LogLevel.Critical, Message = "The xenstore watch loop failed; no device changes are seen any more")]
    public static partial void WatchLoopFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = 1017, Level = LogLevel.Information, Message = "{Device}: the toolstack is removing the device (online=0, state=Closing)")]
    public static partial void ToolstackRemoval(ILogger logger, string device);

    [LoggerMessage(EventId = 1018, Level = LogLevel.Error, Message = "{Device}: recording the failure in xenstore failed")]
    public static partial void ErrorNodeWriteFailed(ILogger logger, string device, Exception exception);

    [LoggerMessage(EventId = 1019, Level = LogLevel.Warning, Message = "Handling the xenstore event on {Path} failed; the next event there looks again")]
    public static partial void WatchEventFailed(ILogger logger, string path, Exception exception);

    [LoggerMessage(EventId = 1020, Level = LogLevel.Information, Message = "{Device}: setup failed; InitWait with the \"error\" node so that the hotplug script reports it, until the toolstack removes the device")]
    public static partial void FailedDeviceAwaitsHotplugScript(ILogger logger, string device);

    [LoggerMessage(EventId = 1021, Level = LogLevel.Warning, Message = "{Device}: ignoring frontend state {State}: the device failed its setup and never connects")]
    public static partial void FrontendRefusedAfterFailure(ILogger logger, string device, XenbusState state);

    [LoggerMessage(EventId = 1022, Level = LogLevel.Information, Message = "{Device}: frontend ready; connecting once the hotplug script has written hotplug-status=connected")]
    public static partial void AwaitingHotplugScript(ILogger logger, string device);

    [LoggerMessage(EventId = 1023, Level = LogLevel.Warning, Message = "{Device}: the hotplug script failed (hotplug-status=error: {HotplugError}); not connecting")]
    public static partial void HotplugScriptFailed(ILogger logger, string device, string hotplugError);

    [LoggerMessage(EventId = 1024, Level = LogLevel.Error, Message = "{Device}: the final flush before closing the disk failed ({Status}); writes the guest completed may not be durable")]
    public static partial void FinalFlushFailed(ILogger logger, string device, string status);

    [LoggerMessage(EventId = 1027, Level = LogLevel.Warning, Message = "{Device}: a handler of the backend's DeviceConnected event failed")]
    public static partial void ConnectedHandlerFailed(ILogger logger, string device, Exception exception);

    [LoggerMessage(EventId = 1025, Level = LogLevel.Information, Message = "{Device}: shares the open disk of another device of the same VM ({Vm}), as during a migration to this host")]
    public static partial void DiskShared(ILogger logger, string device, string vm);
}
