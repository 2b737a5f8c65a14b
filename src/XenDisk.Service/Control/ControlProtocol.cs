using System.Text.Json;
using System.Text.Json.Serialization;

namespace XenDisk.Service.Control;

// The control socket's protocol: the client connects to the Unix stream socket, writes one JSON
// request on one line, and reads one JSON response (the server closes the connection after it).
//   {"command":"status"}  ->  {"ok":true,"status":{...}}  or  {"ok":false,"error":"..."}
//   {"command":"status","collect":true}  ->  the same, after a full compacting garbage collection
//       (status.memory then says what the process holds once nothing unreachable is left)
//   {"command":"hydrate","device":"3/51712","bytesPerSecond":52428800}
//       ->  {"ok":true,"device":"/local/domain/0/backend/vbd/3/51712","hydration":{"state":"running",...}}
//   {"command":"hydrate-cancel","device":"3/51712"}  ->  the same shape, the state as it is after the cancel
//   {"command":"resize","device":"3/xvdb"}
//       ->  {"ok":true,"device":"/local/domain/0/backend/vbd/3/51728","resize":{"oldSizeBytes":...,"sizeBytes":...,"changed":true}}
// "device" is a backend path or DOMID/DEVICE (see DeviceSelector); "bytesPerSecond" is optional
// (absent or 0: no limit). Field names are camelCase; new fields may be added, so readers must
// ignore unknown ones.

/// <param name="Command">status, hydrate, hydrate-cancel or resize (see <see cref="ControlCommands"/>).</param>
/// <param name="Device">The device a hydrate or resize command is about.</param>
/// <param name="BytesPerSecond">hydrate: the most bytes per second taken from the base; null or 0 for no limit.</param>
/// <param name="Collect">status: run a full compacting garbage collection first (see <see cref="MemoryReport"/>).</param>
public sealed record ControlRequest(string Command, string? Device = null, long? BytesPerSecond = null, bool? Collect = null);

/// <param name="Device">The backend path of the device a hydrate command acted on.</param>
/// <param name="Hydration">That device's hydration after the command.</param>
/// <param name="Resize">What a resize command found.</param>
public sealed record ControlResponse(bool Ok, string? Error = null, ServiceStatusReport? Status = null, string? Device = null, HydrationReport? Hydration = null, ResizeReport? Resize = null);

/// <summary>A resize command's answer: the disk's size before and after, and whether the guest was told of a change.</summary>
public sealed record ResizeReport(long OldSizeBytes, long SizeBytes, bool Changed);

/// <summary>The commands the control socket answers.</summary>
public static class ControlCommands
{
    public const string Status = "status";

    /// <summary>Starts hydrating the overlay of an attached device in the background.</summary>
    public const string Hydrate = "hydrate";

    /// <summary>Cancels a running hydration; what was copied is kept, and hydrate resumes it.</summary>
    public const string HydrateCancel = "hydrate-cancel";

    /// <summary>Re-reads an attached disk's size now and tells the guest when it changed (online resize).</summary>
    public const string Resize = "resize";

    public const string Known = "status, hydrate, hydrate-cancel, resize";
}

/// <summary>What `xendisk status` shows.</summary>
public sealed record ServiceStatusReport(
    string Version,
    string Platform,
    bool Simulated,
    DateTimeOffset StartedAt,
    DateTimeOffset TakenAt,
    IReadOnlyList<DeviceReport> Devices,
    MemoryReport? Memory = null,
    TrackedReport? Tracked = null);

/// <summary>
/// What the service keeps per device beyond the devices it reports: with no guest left, every figure
/// must be back where it started (the soak run compares them).
/// </summary>
/// <param name="Devices">Device objects the backend keeps, served or not.</param>
/// <param name="SharedDisks">Disks open for devices of a VM (see the backend's SharedDisks).</param>
/// <param name="Overlays">Copy-on-write overlays open.</param>
public sealed record TrackedReport(int Devices, int SharedDisks, int Overlays);

/// <summary>
/// What the process holds, for telling a leak from garbage not yet collected: an idle .NET process
/// does not collect, so a resident figure alone keeps whatever was allocated since the last full
/// collection. Asked with a collection first, the managed heap is what is still reachable.
/// </summary>
/// <param name="ResidentBytes">VmRSS from /proc/self/status.</param>
/// <param name="AnonymousBytes">RssAnon: the resident part that is neither a file nor shared memory (heaps, stacks).</param>
/// <param name="ManagedHeapBytes">The managed heap after the last collection (live objects plus fragmentation).</param>
/// <param name="ManagedFragmentedBytes">Free space inside that heap.</param>
/// <param name="ManagedCommittedBytes">Memory the garbage collector has committed from the system.</param>
/// <param name="FullCollections">Generation-2 collections since start.</param>
/// <param name="Collected">True when this report was taken right after a forced full collection.</param>
public sealed record MemoryReport(
    long ResidentBytes,
    long AnonymousBytes,
    long ManagedHeapBytes,
    long ManagedFragmentedBytes,
    long ManagedCommittedBytes,
    int FullCollections,
    bool Collected);

/// <param name="FrontendName">The guest domain's name.</param>
/// <param name="MetricsName">The device's xendisk.device attribute in metrics: the guest's name and the device id, stable across its reboots.</param>
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
    string? Error,
    HydrationReport? Hydration = null,
    string? FrontendName = null,
    string? MetricsName = null);

public sealed record DiskReport(string Description, long SizeBytes, int LogicalSectorSize, bool ReadOnly, bool SupportsDiscard, bool HasVolatileCache);

/// <param name="MaxIndirectSegments">What the backend offered (feature-max-indirect-segments). blkif has no key
/// for the frontend's answer: a frontend uses up to min(offer, its own limit), or nothing, without saying so.</param>
/// <param name="LargestRequestBytes">The largest request the device executed so far: more than
/// <see cref="DirectRequestMaxBytes"/> proves that the frontend uses indirect requests.</param>
public sealed record FeaturesReport(bool PersistentGrants, int MaxIndirectSegments, bool Discard, bool SecureDiscard, bool ReadOnly, long LargestRequestBytes = 0)
{
    /// <summary>BLKIF_MAX_SEGMENTS_PER_REQUEST pages: the most a request without indirect segments carries.</summary>
    public const long DirectRequestMaxBytes = XenDisk.Abi.BlkifLimits.MaxSegmentsPerRequest * 4096L;

    /// <summary>The frontend sent indirect requests (seen, not negotiated: nothing in xenstore says so).</summary>
    [JsonIgnore]
    public bool IndirectInUse => LargestRequestBytes > DirectRequestMaxBytes;
}

/// <param name="Connected">False for a queue whose ring is gone (its counters stay in the device's totals).</param>
/// <param name="Engine">How the ring runs its I/O: "io_uring", or "threads" where io_uring was unavailable
/// or configured off (Backend:IoEngine); empty for a queue whose ring is gone.</param>
/// <param name="FastPathRequests">Requests whose data the ring thread moved itself through its io_uring,
/// rather than an I/O thread (an overlay's flushes and allocation, discards and the thread engine take the slow path).</param>
public sealed record QueueReport(int Index, bool Connected, int RingPages, int Entries, long InFlight, bool Halted, long Requests, string Engine, long FastPathRequests);

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

/// <summary>
/// The hydration of a device's overlay (copying what it still reads from its base into it, so it no
/// longer needs the base), started through the control socket: the running one, or the last one on
/// the disk as it is open now. Absent from a device where none was started.
/// </summary>
/// <param name="State">running, finished, failed or cancelled (see <see cref="HydrationStates"/>).</param>
/// <param name="BytesDone">Bytes of the virtual disk examined so far (all of it once finished).</param>
/// <param name="BytesTotal">The virtual disk's size.</param>
/// <param name="BytesCopied">Bytes this run copied from the base, when known (bitmap overlays as they go, qcow2 at the end).</param>
/// <param name="BytesPerSecond">The limit on what is taken from the base; 0 for none.</param>
/// <param name="Error">Why it failed, or what stopped it when it was not cancelled on request.</param>
public sealed record HydrationReport(
    string State,
    long BytesDone,
    long BytesTotal,
    long? BytesCopied,
    long BytesPerSecond,
    DateTimeOffset StartedAt,
    DateTimeOffset? EndedAt,
    string? Error)
{
    [JsonIgnore]
    public bool IsRunning => State == HydrationStates.Running;
}

public static class HydrationStates
{
    public const string Running = "running";
    public const string Finished = "finished";
    public const string Failed = "failed";
    public const string Cancelled = "cancelled";
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
