using Microsoft.Extensions.Logging;

namespace XenDisk.Cow.Qcow2;

/// <summary>The qcow2 engine's log lines: one per image event, never one per request.
/// Event ids 5000-5099 are the qcow2 engine's and never change meaning.</summary>
internal static partial class Qcow2Log
{
    [LoggerMessage(EventId = 5000, Level = LogLevel.Error,
        Message = "qcow2 image {Image} is corrupt: {Problem}; the request failed, the image takes no further writes{Marked}")]
    public static partial void Corrupted(ILogger logger, string image, string problem, string marked);

    [LoggerMessage(EventId = 5001, Level = LogLevel.Error,
        Message = "qcow2 image {Image}: setting the corrupt bit failed ({Status})")]
    public static partial void CorruptBitFailed(ILogger logger, string image, XenDisk.Storage.IoStatus status);
}
