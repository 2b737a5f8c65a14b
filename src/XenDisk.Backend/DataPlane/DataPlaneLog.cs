using Microsoft.Extensions.Logging;
using XenDisk.Abi;

namespace XenDisk.Backend.DataPlane;

/// <summary>The data plane's log lines: one per ring lifecycle event, never one per request.
/// Event ids 2000-2099 are the data plane's and never change meaning.</summary>
internal static partial class DataPlaneLog
{
    [LoggerMessage(EventId = 2000, Level = LogLevel.Information,
        Message = "Ring {Ring} started: {Entries} entries, {Protocol}, {DataPath}, {Engine} engine, up to {IoThreads} I/O threads (started as requests need them), persistent grants {PersistentGrants}, max indirect segments {MaxIndirectSegments}")]
    public static partial void RingStarted(ILogger logger, string ring, int entries, BlkifProtocol protocol, DataPath dataPath, string engine, int ioThreads, bool persistentGrants, int maxIndirectSegments);

    [LoggerMessage(EventId = 2007, Level = LogLevel.Warning,
        Message = "io_uring is not available ({Reason}); rings use the thread engine instead (set IoEngine to Threads to choose it explicitly)")]
    public static partial void IoUringUnavailable(ILogger logger, string reason);

    [LoggerMessage(EventId = 2008, Level = LogLevel.Warning,
        Message = "Ring {Ring} resumed after an unclean stop: {Redone} request(s) in flight are redone, {Unpublished} written response(s) published (req_cons {RequestConsumer}, rsp_prod {ResponseProducer})")]
    public static partial void RingRecovered(ILogger logger, string ring, int redone, uint unpublished, uint requestConsumer, uint responseProducer);

    [LoggerMessage(EventId = 2009, Level = LogLevel.Warning,
        Message = "Ring {Ring}: the in-flight record {Path} was discarded: {Reason}; the ring attaches from the shared ring's indices")]
    public static partial void InflightRecordDiscarded(ILogger logger, string ring, string path, string reason);

    [LoggerMessage(EventId = 2010, Level = LogLevel.Warning,
        Message = "Ring {Ring}: the disk's own queue for this ring could not be opened ({Reason}); its requests go through the I/O threads")]
    public static partial void PolledQueueUnavailable(ILogger logger, string ring, string reason);

    [LoggerMessage(EventId = 2011, Level = LogLevel.Warning,
        Message = "Ring {Ring}: closing the disk's queue for this ring failed")]
    public static partial void PolledQueueCloseFailed(ILogger logger, string ring, Exception exception);

    [LoggerMessage(EventId = 2001, Level = LogLevel.Information,
        Message = "Ring {Ring} stopped after {Requests} requests ({GuestErrors} guest errors, {StorageErrors} storage errors, {Unsupported} unsupported)")]
    public static partial void RingStopped(ILogger logger, string ring, long requests, long guestErrors, long storageErrors, long unsupported);

    [LoggerMessage(EventId = 2002, Level = LogLevel.Error,
        Message = "Ring {Ring} halted: the frontend published req_prod {RequestProducer} with responses produced up to {ResponseProducer} on a ring of {Entries} entries; no further requests are taken")]
    public static partial void RingHalted(ILogger logger, string ring, uint requestProducer, uint responseProducer, int entries);

    [LoggerMessage(EventId = 2003, Level = LogLevel.Critical,
        Message = "Ring {Ring} failed with an unexpected exception and stopped")]
    public static partial void RingFaulted(ILogger logger, string ring, Exception exception);

    [LoggerMessage(EventId = 2004, Level = LogLevel.Error,
        Message = "Ring {Ring}: releasing resources after a failure failed too")]
    public static partial void RingCleanupFailed(ILogger logger, string ring, Exception exception);

    [LoggerMessage(EventId = 2005, Level = LogLevel.Warning,
        Message = "Ring {Ring}: {Failures} grant unmaps failed over the ring's lifetime")]
    public static partial void UnmapFailures(ILogger logger, string ring, long failures);

    [LoggerMessage(EventId = 2006, Level = LogLevel.Error,
        Message = "Ring {Ring}: a StoppedUnexpectedly handler threw")]
    public static partial void StoppedHandlerFailed(ILogger logger, string ring, Exception exception);
}
