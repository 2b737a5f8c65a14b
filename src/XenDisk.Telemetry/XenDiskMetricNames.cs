namespace XenDisk.Telemetry;

/// <summary>
/// Every instrument, unit and attribute XenDisk exports, in one place (OpenTelemetry semantic-convention
/// style: dotted lower-case names, UCUM units, curly-brace annotations for counted things). The Prometheus
/// exposition derives its names from these: dots become underscores, "s" adds "_seconds", "By" adds
/// "_bytes", counters end in "_total" (so xendisk.request.count is xendisk_request_count_total).
/// </summary>
public static class XenDiskMetricNames
{
    /// <summary>The meter every XenDisk instrument belongs to; pass it to MeterProviderBuilder.AddMeter.</summary>
    public const string MeterName = "XenDisk";

    // Request metrics: one series per device and operation, summed over the device's queues.

    /// <summary>Histogram of the time from taking a request off the ring to writing its response. Exposed
    /// from the data plane's fixed buckets (see <see cref="LatencyExportBounds"/>) by the Prometheus endpoint only:
    /// OpenTelemetry has no observable histogram, so OTLP gets <see cref="RequestTime"/> instead.</summary>
    public const string RequestDuration = "xendisk.request.duration";

    /// <summary>Counter: seconds spent by requests, ring to response (the histogram's sum); with
    /// <see cref="RequestCount"/> it gives the mean latency over OTLP.</summary>
    public const string RequestTime = "xendisk.request.time";

    /// <summary>Counter: requests that passed validation and were executed, whatever their outcome.</summary>
    public const string RequestCount = "xendisk.request.count";

    /// <summary>Counter: bytes read, written or discarded by requests that succeeded.</summary>
    public const string IoBytes = "xendisk.io.bytes";

    /// <summary>Counter: requests answered with an error, by <see cref="ErrorTypeAttribute"/>.</summary>
    public const string Errors = "xendisk.errors";

    // Ring metrics: one series per device and queue.

    /// <summary>Gauge: requests taken off the ring whose response has not been written yet.</summary>
    public const string RequestsInFlight = "xendisk.requests.in_flight";

    /// <summary>Histogram of requests taken off the ring per batch (Prometheus only, from the data plane's
    /// power-of-two buckets); OTLP gets <see cref="RingBatches"/>.</summary>
    public const string RingBatchSize = "xendisk.ring.batch_size";

    /// <summary>Counter: batches of requests taken off the ring.</summary>
    public const string RingBatches = "xendisk.ring.batches";

    /// <summary>Counter: times a ring stopped taking requests because bounce buffers ran out.</summary>
    public const string RingBackPressure = "xendisk.ring.back_pressure";

    /// <summary>Gauge: 1 when the ring was halted because the frontend broke the ring protocol.</summary>
    public const string RingHalted = "xendisk.ring.halted";

    /// <summary>Counter: response pushes, by <see cref="NotificationOutcomeAttribute"/> (sent, or suppressed because the frontend did not ask).</summary>
    public const string Notifications = "xendisk.notifications";

    /// <summary>Counter: grant operations, by <see cref="GrantOperationAttribute"/> (map and unmap calls, copy segments).</summary>
    public const string GrantOperations = "xendisk.grant.operations";

    /// <summary>Counter: unmap calls that reported an error (a mapping may have leaked).</summary>
    public const string GrantUnmapFailures = "xendisk.grant.unmap_failures";

    /// <summary>Counter: persistent-grant lookups, by <see cref="PersistentGrantResultAttribute"/> (hit, miss).</summary>
    public const string PersistentGrantLookups = "xendisk.persistent_grant.lookups";

    /// <summary>Counter: persistent grants unmapped, by <see cref="PersistentGrantEvictionReasonAttribute"/> (capacity, idle).</summary>
    public const string PersistentGrantEvictions = "xendisk.persistent_grant.evictions";

    /// <summary>Gauge: persistent grants currently mapped.</summary>
    public const string PersistentGrantsMapped = "xendisk.persistent_grant.mapped";

    // Device metrics.

    /// <summary>Gauge: devices served, by <see cref="DeviceStateAttribute"/>.</summary>
    public const string Devices = "xendisk.devices";

    // Copy-on-write metrics, registered by XenDiskMetrics.RegisterCopyOnWrite; one series per overlay image.

    public const string CowCopyUps = "xendisk.cow.copy_ups";
    public const string CowCopiedBytes = "xendisk.cow.copied_bytes";
    public const string CowMetadataWrites = "xendisk.cow.metadata.writes";
    public const string CowMetadataFlushes = "xendisk.cow.metadata.flushes";
    public const string CowCacheLookups = "xendisk.cow.cache.lookups";
    public const string CowOverlayAllocated = "xendisk.cow.overlay.allocated";
    public const string CowHydrationProgress = "xendisk.cow.hydration.progress";

    /// <summary>UCUM units.</summary>
    public static class Units
    {
        public const string Seconds = "s";
        public const string Bytes = "By";
        public const string Ratio = "1";
        public const string Requests = "{request}";
        public const string Errors = "{error}";
        public const string Batches = "{batch}";
        public const string Events = "{event}";
        public const string Notifications = "{notification}";
        public const string Operations = "{operation}";
        public const string Lookups = "{lookup}";
        public const string Grants = "{grant}";
        public const string Devices = "{device}";
        public const string CopyUps = "{copy_up}";
        public const string Writes = "{write}";
        public const string Flushes = "{flush}";
    }

    // Attributes.

    /// <summary>The device's backend path, /local/domain/&lt;backend&gt;/backend/&lt;kind&gt;/&lt;domid&gt;/&lt;devid&gt;.</summary>
    public const string DeviceAttribute = "xendisk.device";

    /// <summary>The queue (ring) index within the device.</summary>
    public const string QueueAttribute = "xendisk.queue";

    /// <summary>read, write, flush, barrier, discard.</summary>
    public const string OperationAttribute = "xendisk.operation";

    /// <summary>guest, storage, unsupported (semantic conventions' error.type).</summary>
    public const string ErrorTypeAttribute = "error.type";

    public const string NotificationOutcomeAttribute = "xendisk.notification.outcome";
    public const string GrantOperationAttribute = "xendisk.grant.operation";
    public const string PersistentGrantResultAttribute = "xendisk.persistent_grant.result";
    public const string PersistentGrantEvictionReasonAttribute = "xendisk.persistent_grant.reason";
    public const string DeviceStateAttribute = "xendisk.device.state";

    /// <summary>The overlay image a copy-on-write series describes.</summary>
    public const string ImageAttribute = "xendisk.image";

    /// <summary>hit, miss for <see cref="CowCacheLookups"/>.</summary>
    public const string CacheResultAttribute = "xendisk.cache.result";

    /// <summary>Attribute values.</summary>
    public static class Values
    {
        /// <summary>Indexed by XenDisk.Backend.DataPlane.RingOperation.</summary>
        public static readonly string[] Operations = ["read", "write", "flush", "barrier", "discard"];

        public const string ErrorGuest = "guest";
        public const string ErrorStorage = "storage";
        public const string ErrorUnsupported = "unsupported";
        public const string Sent = "sent";
        public const string Suppressed = "suppressed";
        public const string Map = "map";
        public const string Unmap = "unmap";
        public const string Copy = "copy";
        public const string Hit = "hit";
        public const string Miss = "miss";
        public const string Capacity = "capacity";
        public const string Idle = "idle";
    }

    /// <summary>
    /// Upper bounds (seconds) of the latency buckets the Prometheus endpoint exposes: two per power of two
    /// from 2^10 ns (1.024 µs) to 2^34 ns (17.2 s). Each is a bound of the data plane's own buckets
    /// (LatencyHistogram keeps four per power of two), so every exported bucket count is exact, not
    /// interpolated; 49 buckets keep a device's latency series small while histogram_quantile stays
    /// within half a power of two.
    /// </summary>
    public static IReadOnlyList<double> LatencyExportBounds { get; } = BuildLatencyBounds();

    private static double[] BuildLatencyBounds()
    {
        var bounds = new List<double>();
        for (int power = 10; power <= 34; power++)
        {
            bounds.Add((1L << power) / 1e9);
            if (power < 34)
            {
                bounds.Add(((1L << power) + (1L << (power - 1))) / 1e9);
            }
        }

        return [.. bounds];
    }
}
