using System.Text.Json;
using System.Text.Json.Serialization;

namespace XenDisk.Service.Control;

// The control socket's protocol: the client connects to the Unix stream socket, writes one JSON
// request on one line, and reads one JSON response (the server closes the connection after it).
//   {"command":"status"}  ->  {"ok":true,"status":{...}}  or  {"ok":false,"error":"..."}
// Field names are camelCase; new fields may be added, so readers must ignore unknown ones.

public sealed record ControlRequest(string Command);

public sealed record ControlResponse(bool Ok, string? Error = null, ServiceStatusReport? Status = null);

/// <summary>What `xendisk status` shows.</summary>
public sealed record ServiceStatusReport(
    string Version,
    string Platform,
    bool Simulated,
    DateTimeOffset StartedAt,
    DateTimeOffset TakenAt,
    IReadOnlyList<DeviceReport> Devices);

public sealed record DeviceReport(
    string BackendPath,
    string Kind,
    uint FrontendDomainId,
    int DeviceId,
    string State,
    string? FrontendPath,
    DiskReport? Disk,
    bool ReadOnly,
    string? Protocol,
    FeaturesReport? Features,
    IReadOnlyList<QueueReport> Queues,
    CountersReport Counters,
    string? Error);

public sealed record DiskReport(string Description, long SizeBytes, int LogicalSectorSize, bool ReadOnly, bool SupportsDiscard, bool HasVolatileCache);

public sealed record FeaturesReport(bool PersistentGrants, int MaxIndirectSegments, bool Discard, bool SecureDiscard, bool ReadOnly);

/// <param name="Connected">False for a queue whose ring is gone (its counters stay in the device's totals).</param>
public sealed record QueueReport(int Index, bool Connected, int RingPages, int Entries, long InFlight, bool Halted, long Requests);

/// <summary>Cumulative since the device appeared (across reconnects), except <see cref="InFlight"/>.</summary>
public sealed record CountersReport(
    IReadOnlyList<OperationReport> Operations,
    long GuestErrors,
    long StorageErrors,
    long Unsupported,
    long InFlight,
    long NotificationsSent,
    long NotificationsSuppressed,
    long PersistentGrantHits,
    long PersistentGrantMisses)
{
    [JsonIgnore]
    public long TotalRequests => Operations.Sum(o => o.Requests);

    [JsonIgnore]
    public long TotalErrors => GuestErrors + StorageErrors + Unsupported;
}

/// <param name="P50Seconds">Median latency, estimated from the data plane's histogram; null before the first request.</param>
public sealed record OperationReport(string Operation, long Requests, long Bytes, double? P50Seconds, double? P99Seconds);

[JsonSourceGenerationOptions(JsonSerializerDefaults.Web, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(ControlRequest))]
[JsonSerializable(typeof(ControlResponse))]
[JsonSerializable(typeof(ServiceStatusReport))]
internal sealed partial class ControlJsonContext : JsonSerializerContext
{
    /// <summary>For `xendisk status --json`: the same shape, indented for people who pipe it to less.</summary>
    public static ControlJsonContext Indented { get; } = new(new JsonSerializerOptions(JsonSerializerDefaults.Web)
    {
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    });
}
