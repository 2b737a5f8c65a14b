namespace XenDisk.Telemetry;

/// <summary>
/// Every instrument, unit and attribute XenDisk exports, in one place (OpenTelemetry semantic-convention
/// style: dotted lower-case names, UCUM units, curly-brace annotations for counted things). The Prometheus
/// exporter derives its names from these: dots become underscores, "s" adds "_seconds", "By" adds
/// "_bytes", curly-brace units and "1" add nothing, counters end in "_total" (so
/// xendisk.io.bytes is xendisk_io_bytes_total and xendisk.request.duration is
/// xendisk_request_duration_seconds_bucket/_sum/_count).
/// </summary>
public static class XenDiskMetricNames
{
    /// <summary>The meter every XenDisk instrument belongs to; pass it to MeterProviderBuilder.AddMeter.</summary>
    public const string MeterName = "XenDisk";

    // Request metrics: one series per device and operation, summed over the device's queues.

    /// <summary>Histogram of the time from taking a request off the ring to writing its response, recorded
    /// per request on the ring thread (bounds <see cref="LatencyBucketBounds"/>). Its count is the number of
    /// requests executed and its sum the time they took, so no separate counters carry those.</summary>
    public const string RequestDuration = "xendisk.request.duration";

    /// <summary>Counter: bytes read, written or discarded by requests that succeeded.</summary>
    public const string IoBytes = "xendisk.io.bytes";

    /// <summary>Counter: requests answered with an error, by <see cref="ErrorTypeAttribute"/>.</summary>
    public const string Errors = "xendisk.errors";

    // Ring metrics: one series per device and queue.

    /// <summary>Gauge: requests taken off the ring whose response has not been written yet.</summary>
    public const string RequestsInFlight = "xendisk.requests.in_flight";

    /// <summary>Histogram of requests taken off the ring per batch (bounds <see cref="BatchSizeBucketBounds"/>);
    /// its count is the number of batches.</summary>
    public const string RingBatchSize = "xendisk.ring.batch_size";

    /// <summary>Counter: times a ring stopped taking requests because bounce buffers ran out.</summary>
    public const string RingBackPressure = "xendisk.ring.back_pressure";

    /// <summary>Counter: requests whose data the ring thread moved itself through its io_uring (not handed to an I/O thread).</summary>
    public const string RingFastPathRequests = "xendisk.ring.fast_path_requests";

    /// <summary>Counter: io_uring_enter calls of the ring thread (submissions and sleeps; the notifications are the ring's other system calls).</summary>
    public const string RingEngineCalls = "xendisk.ring.engine_calls";

    /// <summary>Gauge: the ring's I/O threads started so far (they start as slow-path requests need them, up to IoThreadsPerRing).</summary>
    public const string RingIoThreads = "xendisk.ring.io_threads";

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
        public const string Calls = "{call}";
        public const string Threads = "{thread}";
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

    /// <summary>The guest's name and the device id, "web1/51712" (DeviceStatus.MetricsName): stable across the guest's reboots.</summary>
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
    /// Upper bounds (seconds) of the request-duration buckets: two per power of two from 2^10 ns
    /// (1.024 µs) to 2^34 ns (17.2 s). Each is a bound of the data plane's own buckets (LatencyHistogram
    /// keeps four per power of two), so requests counted before telemetry attached to a ring can be
    /// replayed into the right bucket; 49 buckets keep a device's series small while histogram_quantile
    /// stays within half a power of two.
    /// </summary>
    public static IReadOnlyList<double> LatencyBucketBounds { get; } = BuildLatencyBounds();

    /// <summary>
    /// Upper bounds of the batch-size buckets: half-way between whole numbers (0.5, 1.5, 2.5, 4.5, 8.5,
    /// ...), so that each bucket is centred on the sizes it holds. histogram_quantile interpolates
    /// linearly inside a bucket: with a bucket (0, 1] a ring taking one request at a time reads as a
    /// median batch of 0.5; with (0.5, 1.5] it reads 1. The edges also match the data plane's
    /// power-of-two batch buckets (1, 2, 3-4, 5-8, ...), so replayed counts land in the right bucket.
    /// </summary>
    public static IReadOnlyList<double> BatchSizeBucketBounds { get; } = BuildBatchSizeBounds();

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

    /// <summary>0.5, 1.5, then 2^k + 0.5 up to 2^11 + 0.5 (a ring has at most 2048 slots: 16 pages of 128).</summary>
    private static double[] BuildBatchSizeBounds()
    {
        var bounds = new List<double> { 0.5 };
        for (int power = 0; power <= 11; power++)
        {
            bounds.Add((1 << power) + 0.5);
        }

        return [.. bounds];
    }
}
