using System.Diagnostics.Metrics;
using XenDisk.Abi;
using XenDisk.Backend.DataPlane;
using XenDisk.Telemetry.Collection;
using XenDisk.Telemetry.CopyOnWrite;
using XenDisk.Telemetry.Prometheus;
using static XenDisk.Telemetry.XenDiskMetricNames;

namespace XenDisk.Telemetry;

/// <summary>
/// XenDisk's OpenTelemetry instruments. Every one is observable: its callback reads the collector's
/// snapshot of the rings' counters at export time, so the data plane pays nothing for telemetry.
/// Request metrics carry xendisk.device and xendisk.operation (summed over the device's queues); ring
/// metrics carry xendisk.device and xendisk.queue.
///
/// The two bucket histograms (latency, batch size) are not OpenTelemetry instruments (there is no
/// observable histogram): <see cref="GetBucketHistograms"/> hands them to the Prometheus exposition,
/// and OTLP receives their sums and counts (<see cref="RequestTime"/>, <see cref="RingBatches"/>).
///
/// Ownership: the meter comes from the <see cref="IMeterFactory"/>, which disposes it; <see cref="Dispose"/>
/// disposes it earlier (instruments then stop reporting).
/// </summary>
public sealed class XenDiskMetrics : IDisposable
{
    private static readonly XenbusState[] AllStates = Enum.GetValues<XenbusState>();
    private static readonly string[] StateNames = [.. AllStates.Select(s => s.ToString().ToLowerInvariant())];

    private readonly BackendStatisticsCollector _collector;
    private readonly Lock _copyOnWriteLock = new();
    private readonly List<ICopyOnWriteMetricsSource> _copyOnWriteSources = [];
    private bool _copyOnWriteInstrumentsCreated;

    public XenDiskMetrics(IMeterFactory meterFactory, BackendStatisticsCollector collector)
    {
        ArgumentNullException.ThrowIfNull(meterFactory);
        ArgumentNullException.ThrowIfNull(collector);
        _collector = collector;
        Meter = meterFactory.Create(new MeterOptions(MeterName));

        Meter.CreateObservableCounter(RequestCount, () => PerOperation(c => c.Requests), Units.Requests,
            "Requests that passed validation and were executed, whatever their outcome");
        Meter.CreateObservableCounter(IoBytes, () => PerOperation(c => c.Bytes), Units.Bytes,
            "Bytes read, written or discarded by requests that succeeded");
        Meter.CreateObservableCounter(RequestTime, ObserveRequestTime, Units.Seconds,
            "Time requests spent from leaving the ring to their response (divide by xendisk.request.count for the mean)");
        Meter.CreateObservableCounter(Errors, ObserveErrors, Units.Errors,
            "Requests answered with an error: guest (malformed, out of range, bad grant), storage (I/O failed), unsupported (EOPNOTSUPP)");
        Meter.CreateObservableGauge(RequestsInFlight, () => PerQueue(c => c.InFlight), Units.Requests,
            "Requests taken off the ring whose response has not been written yet");
        Meter.CreateObservableCounter(RingBatches, () => PerQueue(c => c.Batches), Units.Batches,
            "Batches of requests taken off the ring");
        Meter.CreateObservableCounter(RingBackPressure, () => PerQueue(c => c.BackPressureEvents), Units.Events,
            "Times the ring stopped taking requests because its bounce buffers ran out");
        Meter.CreateObservableGauge(RingHalted, ObserveHalted, unit: null,
            "1 when the ring was halted because the frontend broke the ring protocol");
        Meter.CreateObservableCounter(Notifications, ObserveNotifications, Units.Notifications,
            "Response pushes that notified the frontend (sent) or needed no notification (suppressed)");
        Meter.CreateObservableCounter(GrantOperations, ObserveGrantOperations, Units.Operations,
            "Grant map and unmap calls, and grant-copy segments");
        Meter.CreateObservableCounter(GrantUnmapFailures, () => PerQueue(c => c.GrantUnmapFailures), Units.Operations,
            "Grant unmap calls that reported an error");
        Meter.CreateObservableCounter(PersistentGrantLookups, ObservePersistentLookups, Units.Lookups,
            "Persistent-grant cache lookups by result");
        Meter.CreateObservableCounter(PersistentGrantEvictions, ObservePersistentEvictions, Units.Grants,
            "Persistent grants unmapped to make room (capacity) or after idling (idle)");
        Meter.CreateObservableGauge(PersistentGrantsMapped, () => PerQueue(c => c.PersistentGrantsMapped), Units.Grants,
            "Persistent grants currently mapped");
        Meter.CreateObservableGauge(Devices, ObserveDevices, Units.Devices,
            "Devices served, by the XenbusState the backend last published");
    }

    public Meter Meter { get; }

    public BackendStatisticsCollector Collector => _collector;

    /// <summary>
    /// The hook for the copy-on-write engine: registers a source whose overlays are reported as
    /// xendisk.cow.* instruments (copy-ups, copied bytes, metadata writes and flushes, cache lookups,
    /// allocated bytes, hydration progress), one series per image. May be called any time, more than once.
    /// </summary>
    public void RegisterCopyOnWrite(ICopyOnWriteMetricsSource source)
    {
        ArgumentNullException.ThrowIfNull(source);
        lock (_copyOnWriteLock)
        {
            _copyOnWriteSources.Add(source);
            if (_copyOnWriteInstrumentsCreated)
            {
                return;
            }

            _copyOnWriteInstrumentsCreated = true;
        }

        Meter.CreateObservableCounter(CowCopyUps, () => PerImage(i => i.CopyUps), Units.CopyUps,
            "Clusters copied up from the base image before a partial write");
        Meter.CreateObservableCounter(CowCopiedBytes, () => PerImage(i => i.CopiedBytes), Units.Bytes,
            "Bytes copied from the base image into the overlay");
        Meter.CreateObservableCounter(CowMetadataWrites, () => PerImage(i => i.MetadataWrites), Units.Writes,
            "Overlay metadata writes");
        Meter.CreateObservableCounter(CowMetadataFlushes, () => PerImage(i => i.MetadataFlushes), Units.Flushes,
            "Flushes making overlay metadata durable");
        Meter.CreateObservableCounter(CowCacheLookups, ObserveCacheLookups, Units.Lookups,
            "Overlay metadata-cache lookups by result");
        Meter.CreateObservableGauge(CowOverlayAllocated, () => PerImage(i => i.OverlayAllocatedBytes), Units.Bytes,
            "Bytes the overlay occupies");
        Meter.CreateObservableGauge(CowHydrationProgress, ObserveHydration, Units.Ratio,
            "Fraction of the image present in the overlay");
    }

    /// <summary>The latency and batch-size histograms of every device, for the Prometheus exposition.</summary>
    public IReadOnlyList<BucketHistogramFamily> GetBucketHistograms()
    {
        BackendSnapshot snapshot = _collector.GetSnapshot();
        var latency = new List<BucketHistogramSeries>();
        var batches = new List<BucketHistogramSeries>();
        IReadOnlyList<double> latencyBounds = LatencyExportBounds;
        double[] batchBounds = BatchSizeBounds();
        foreach (DeviceCounters device in snapshot.Devices)
        {
            for (int op = 0; op < RingStatistics.OperationCount; op++)
            {
                long[] cumulative = LatencyQuantiles.Cumulative(device.Total.LatencyBuckets[op], latencyBounds);
                latency.Add(new BucketHistogramSeries(
                    [new(DeviceAttribute, device.Status.BackendPath), new(OperationAttribute, Values.Operations[op])],
                    cumulative, device.Total.LatencyCount[op], device.Total.LatencySumNanoseconds[op] / 1e9));
            }

            foreach (QueueCounters queue in device.Queues)
            {
                var cumulative = new long[batchBounds.Length];
                long running = 0;
                for (int b = 0; b < batchBounds.Length; b++)
                {
                    running += queue.Counters.BatchSizeBuckets[b];
                    cumulative[b] = running;
                }

                // The data plane counts batches per size bucket but not the sum of their sizes: no _sum.
                batches.Add(new BucketHistogramSeries(QueueAttributes(device, queue), cumulative, queue.Counters.Batches, Sum: null));
            }
        }

        return
        [
            new BucketHistogramFamily(RequestDuration, Units.Seconds,
                "Time from taking a request off the ring to writing its response", latencyBounds, latency),
            new BucketHistogramFamily(RingBatchSize, Units.Requests,
                "Requests taken off the ring per batch", batchBounds, batches),
        ];
    }

    public void Dispose() => Meter.Dispose();

    /// <summary>The closed power-of-two bounds of the data plane's batch-size buckets (the last one is open-ended: +Inf).</summary>
    private static double[] BatchSizeBounds()
    {
        var bounds = new double[RingStatistics.BatchSizeBucketCount - 1];
        for (int b = 0; b < bounds.Length; b++)
        {
            bounds[b] = RingStatistics.BatchSizeBucketUpperBound(b);
        }

        return bounds;
    }

    private IEnumerable<Measurement<long>> PerOperation(Func<RingCounters, long[]> select)
    {
        foreach (DeviceCounters device in _collector.GetSnapshot().Devices)
        {
            long[] values = select(device.Total);
            for (int op = 0; op < values.Length; op++)
            {
                yield return new Measurement<long>(values[op], Device(device), new(OperationAttribute, Values.Operations[op]));
            }
        }
    }

    private IEnumerable<Measurement<double>> ObserveRequestTime()
    {
        foreach (DeviceCounters device in _collector.GetSnapshot().Devices)
        {
            for (int op = 0; op < RingStatistics.OperationCount; op++)
            {
                yield return new Measurement<double>(device.Total.LatencySumNanoseconds[op] / 1e9, Device(device), new(OperationAttribute, Values.Operations[op]));
            }
        }
    }

    private IEnumerable<Measurement<long>> ObserveErrors()
    {
        foreach (DeviceCounters device in _collector.GetSnapshot().Devices)
        {
            yield return new Measurement<long>(device.Total.GuestErrors, Device(device), new(ErrorTypeAttribute, Values.ErrorGuest));
            yield return new Measurement<long>(device.Total.StorageErrors, Device(device), new(ErrorTypeAttribute, Values.ErrorStorage));
            yield return new Measurement<long>(device.Total.Unsupported, Device(device), new(ErrorTypeAttribute, Values.ErrorUnsupported));
        }
    }

    private IEnumerable<Measurement<long>> PerQueue(Func<RingCounters, long> select)
    {
        foreach (DeviceCounters device in _collector.GetSnapshot().Devices)
        {
            foreach (QueueCounters queue in device.Queues)
            {
                yield return new Measurement<long>(select(queue.Counters), Device(device), Queue(queue));
            }
        }
    }

    private IEnumerable<Measurement<long>> PerQueue(Func<RingCounters, long> select, string attribute, string value)
    {
        foreach (DeviceCounters device in _collector.GetSnapshot().Devices)
        {
            foreach (QueueCounters queue in device.Queues)
            {
                yield return new Measurement<long>(select(queue.Counters), Device(device), Queue(queue), new(attribute, value));
            }
        }
    }

    private IEnumerable<Measurement<int>> ObserveHalted()
    {
        foreach (DeviceCounters device in _collector.GetSnapshot().Devices)
        {
            foreach (QueueCounters queue in device.Queues.Where(q => q.Connected))
            {
                yield return new Measurement<int>(queue.Counters.Halted ? 1 : 0, Device(device), Queue(queue));
            }
        }
    }

    private IEnumerable<Measurement<long>> ObserveNotifications() =>
        PerQueue(c => c.NotificationsSent, NotificationOutcomeAttribute, Values.Sent)
            .Concat(PerQueue(c => c.NotificationsSuppressed, NotificationOutcomeAttribute, Values.Suppressed));

    private IEnumerable<Measurement<long>> ObserveGrantOperations() =>
        PerQueue(c => c.GrantMaps, GrantOperationAttribute, Values.Map)
            .Concat(PerQueue(c => c.GrantUnmaps, GrantOperationAttribute, Values.Unmap))
            .Concat(PerQueue(c => c.GrantCopySegments, GrantOperationAttribute, Values.Copy));

    private IEnumerable<Measurement<long>> ObservePersistentLookups() =>
        PerQueue(c => c.PersistentGrantHits, PersistentGrantResultAttribute, Values.Hit)
            .Concat(PerQueue(c => c.PersistentGrantMisses, PersistentGrantResultAttribute, Values.Miss));

    private IEnumerable<Measurement<long>> ObservePersistentEvictions() =>
        PerQueue(c => c.PersistentGrantEvictions, PersistentGrantEvictionReasonAttribute, Values.Capacity)
            .Concat(PerQueue(c => c.PersistentGrantExpirations, PersistentGrantEvictionReasonAttribute, Values.Idle));

    /// <summary>Every state is reported, zeros included, so that a state no device is in any more drops to 0.</summary>
    private IEnumerable<Measurement<int>> ObserveDevices()
    {
        IReadOnlyList<DeviceCounters> devices = _collector.GetSnapshot().Devices;
        for (int i = 0; i < AllStates.Length; i++)
        {
            XenbusState state = AllStates[i];
            yield return new Measurement<int>(devices.Count(d => d.Status.State == state),
                new KeyValuePair<string, object?>(DeviceStateAttribute, StateNames[i]));
        }
    }

    private List<CopyOnWriteImageCounters> CopyOnWriteImages()
    {
        ICopyOnWriteMetricsSource[] sources;
        lock (_copyOnWriteLock)
        {
            sources = [.. _copyOnWriteSources];
        }

        return [.. sources.SelectMany(s => s.GetImages())];
    }

    private IEnumerable<Measurement<long>> PerImage(Func<CopyOnWriteImageCounters, long> select) =>
        CopyOnWriteImages().Select(i => new Measurement<long>(select(i), new KeyValuePair<string, object?>(ImageAttribute, i.Image)));

    private IEnumerable<Measurement<long>> ObserveCacheLookups() =>
        CopyOnWriteImages().SelectMany(i => new[]
        {
            new Measurement<long>(i.CacheHits, new(ImageAttribute, i.Image), new(CacheResultAttribute, Values.Hit)),
            new Measurement<long>(i.CacheMisses, new(ImageAttribute, i.Image), new(CacheResultAttribute, Values.Miss)),
        });

    private IEnumerable<Measurement<double>> ObserveHydration() =>
        CopyOnWriteImages()
            .Where(i => i.HydrationProgress is not null)
            .Select(i => new Measurement<double>(i.HydrationProgress!.Value, new KeyValuePair<string, object?>(ImageAttribute, i.Image)));

    private static KeyValuePair<string, object?> Device(DeviceCounters device) => new(DeviceAttribute, device.Status.BackendPath);

    private static KeyValuePair<string, object?> Queue(QueueCounters queue) => new(QueueAttribute, queue.QueueIndex);

    private static KeyValuePair<string, string>[] QueueAttributes(DeviceCounters device, QueueCounters queue) =>
        [new(DeviceAttribute, device.Status.BackendPath), new(QueueAttribute, queue.QueueIndex.ToString(System.Globalization.CultureInfo.InvariantCulture))];
}
