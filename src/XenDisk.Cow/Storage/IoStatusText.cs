using XenDisk.Storage;

namespace XenDisk.Cow.Storage;

/// <summary>Statuses in operators' words for messages ("read-only", not "ReadOnly").</summary>
public static class IoStatusText
{
    public static string Describe(this IoStatus status) => status switch
    {
        IoStatus.Ok => "success",
        IoStatus.IoError => "I/O error",
        IoStatus.NoSpace => "no space left on device",
        IoStatus.ReadOnly => "read-only",
        IoStatus.OutOfRange => "out of range",
        IoStatus.NotSupported => "not supported",
        _ => status.ToString(),
    };
}
