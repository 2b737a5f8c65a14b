using System.Diagnostics.Metrics;
using XenDisk.Abi;
using XenDisk.Backend.ControlPlane;
using XenDisk.Backend.DataPlane;
using XenDisk.Telemetry.Collection;
using XenDisk.Telemetry.CopyOnWrite;
using static XenDisk.Telemetry.XenDiskMetricNames;

namespace XenDisk.Telemetry;

/// <summary>
/// XenDisk's OpenTelemetry instruments. Two are histograms recorded as requests complete: the ring thread
/// reports each request and batch to a <see cref="RingObserver"/> (see <see cref="AttachRings"/>), which
/// records into <see cref="RequestDuration"/> and <see cref="RingBatchSize"/> with tag lists built once per
/// ring. Every other instrument is observable: its callback reads the collector's snapshot of the rings'
/// counters at export time, so the data plane pays nothing for it.
/// Request metrics carry xendisk.device and xendisk.operation (summed over the device's queues); ring
/// metrics carry xendisk.device and xendisk.queue.
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
    private readonly Lock _namedLock = new();
    private BackendSnapshot? _namedSnapshot;
    private List<NamedDevice> _named = [];

    public XenDiskMetrics(IMeterFactory meterFactory, BackendStatisticsCollector collector)
    {
        ArgumentNullException.ThrowIfNull(meterFactory);
        ArgumentNullException.ThrowIfNull(collector);
        _collector = collector;
        Meter = meterFactory.Create(new MeterOptions(MeterName));

        RequestDurations = Meter.CreateHistogram(RequestDuration, Units.Seconds,
            "Time from taking a request off the ring to writing its response (count: requests executed, whatever their outcome)",
            tags: null, new InstrumentAdvice<double> { HistogramBucketBoundaries = LatencyBucketBounds });
        BatchSizes = Meter.CreateHistogram(RingBatchSize, Units.Requests,
            "Requests taken off the ring per batch (count: batches)",
            tags: null, new InstrumentAdvice<double> { HistogramBucketBoundaries = BatchSizeBucketBounds });
        Meter.CreateObservableCounter(IoBytes, () => PerOperation(c => c.Bytes), Units.Bytes,
            "Bytes read, written or discarded by requests that succeeded");
        Meter.CreateObservableCounter(Errors, ObserveErrors, Units.Errors,
            "Requests answered with an error: guest (malformed, out of range, bad grant), storage (I/O failed), unsupported (EOPNOTSUPP)");
        Meter.CreateObservableGauge(RequestsInFlight, () => PerQueue(c => c.InFlight), Units.Requests,
            "Requests taken off the ring whose response has not been written yet");
        Meter.CreateObservableCounter(RingBackPressure, () => PerQueue(c => c.BackPressureEvents), Units.Events,
            "Times the ring stopped taking requests because its bounce buffers ran out");
        Meter.CreateObservableCounter(RingFastPathRequests, () => PerQueue(c => c.FastPathRequests), Units.Requests,
            "Requests whose data the ring thread moved itself through its io_uring rather than an I/O thread");
        Meter.CreateObservableCounter(RingEngineCalls, () => PerQueue(c => c.EngineCalls), Units.Calls,
            "io_uring_enter calls of the ring thread: each submits what the loop queued, most also sleep until a kick or a completion");
        Meter.CreateObservableGauge(RingIoThreads, () => PerQueue(c => c.IoThreadsStarted), Units.Threads,
            "I/O threads the ring has started for its slow path (allocation, copy-up, discard; everything with the thread engine); none while every request takes the fast path");
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

    /// <summary><see cref="RequestDuration"/>: seconds, per device and operation.</summary>
    public Histogram<double> RequestDurations { get; }

    /// <summary><see cref="RingBatchSize"/>: requests per batch, per device and queue.</summary>
    public Histogram<double> BatchSizes { get; }

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

    /// <summary>
    /// Offers a <see cref="RingObserver"/> to every ring of every device that has none yet, so that its
    /// requests and batches are recorded into the histograms; returns how many rings were new. Cheap when
    /// nothing changed: the telemetry host calls it on a short timer, so that a ring is observed from
    /// about its first request (what it counted before is replayed when it adopts the observer).
    /// </summary>
    public int AttachRings()
    {
        int attached = 0;
        foreach (DeviceStatus device in _collector.Source.GetDevices())
        {
            foreach (QueueStatus queue in device.Queues)
            {
                RingStatistics statistics = queue.Ring.Statistics;
                if (!statistics.IsObserved && statistics.Observe(new RingObserver(RequestDurations, BatchSizes, device.MetricsName, queue.QueueIndex)))
                {
                    attached++;
                }
            }
        }

        return attached;
    }

    public void Dispose() => Meter.Dispose();

    private IEnumerable<Measurement<long>> PerOperation(Func<RingCounters, long[]> select)
    {
        foreach (NamedDevice device in NamedDevices())
        {
            long[] values = select(device.Total);
            for (int op = 0; op < values.Length; op++)
            {
                yield return new Measurement<long>(values[op], device.Tag, new(OperationAttribute, Values.Operations[op]));
            }
        }
    }

    private IEnumerable<Measurement<long>> ObserveErrors()
    {
        foreach (NamedDevice device in NamedDevices())
        {
            yield return new Measurement<long>(device.Total.GuestErrors, device.Tag, new(ErrorTypeAttribute, Values.ErrorGuest));
            yield return new Measurement<long>(device.Total.StorageErrors, device.Tag, new(ErrorTypeAttribute, Values.ErrorStorage));
            yield return new Measurement<long>(device.Total.Unsupported, device.Tag, new(ErrorTypeAttribute, Values.ErrorUnsupported));
        }
    }

    private IEnumerable<Measurement<long>> PerQueue(Func<RingCounters, long> select)
    {
        foreach (NamedDevice device in NamedDevices())
        {
            foreach ((int queue, NamedQueue counters) in device.Queues)
            {
                yield return new Measurement<long>(select(counters.Counters), device.Tag, Queue(queue));
            }
        }
    }

    private IEnumerable<Measurement<long>> PerQueue(Func<RingCounters, long> select, string attribute, string value)
    {
        foreach (NamedDevice device in NamedDevices())
        {
            foreach ((int queue, NamedQueue counters) in device.Queues)
            {
                yield return new Measurement<long>(select(counters.Counters), device.Tag, Queue(queue), new(attribute, value));
            }
        }
    }

    private IEnumerable<Measurement<int>> ObserveHalted()
    {
        foreach (NamedDevice device in NamedDevices())
        {
            foreach ((int queue, NamedQueue counters) in device.Queues.Where(q => q.Value.Connected))
            {
                yield return new Measurement<int>(counters.Counters.Halted ? 1 : 0, device.Tag, Queue(queue));
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

    /// <summary>
    /// The snapshot's devices by <see cref="DeviceStatus.MetricsName"/>, summed: the devices of one
    /// guest's old and new domain coexist for a moment (a reboot, a migration to this host), and an
    /// observable instrument given two values for one series keeps only the last. Built once per
    /// snapshot (every callback of one collection reads the same one).
    /// </summary>
    private List<NamedDevice> NamedDevices()
    {
        BackendSnapshot snapshot = _collector.GetSnapshot();
        lock (_namedLock)
        {
            if (!ReferenceEquals(snapshot, _namedSnapshot))
            {
                var byName = new Dictionary<string, NamedDevice>(StringComparer.Ordinal);
                foreach (DeviceCounters device in snapshot.Devices)
                {
                    string name = device.Status.MetricsName;
                    if (!byName.TryGetValue(name, out NamedDevice? named))
                    {
                        named = new NamedDevice(name);
                        byName.Add(name, named);
                    }

                    named.Add(device);
                }

                _named = [.. byName.Values];
                _namedSnapshot = snapshot;
            }

            return _named;
        }
    }

    private static KeyValuePair<string, object?> Queue(int queue) => new(QueueAttribute, queue);

    /// <summary>One series' worth of devices: the sum of their totals and of their queues by index.</summary>
    private sealed class NamedDevice(string name)
    {
        public KeyValuePair<string, object?> Tag { get; } = new(DeviceAttribute, name);

        public RingCounters Total { get; } = new();

        public SortedDictionary<int, NamedQueue> Queues { get; } = [];

        public void Add(DeviceCounters device)
        {
            Total.Add(device.Total, includeMomentary: true);
            foreach (QueueCounters queue in device.Queues)
            {
                if (!Queues.TryGetValue(queue.QueueIndex, out NamedQueue? named))
                {
                    named = new NamedQueue();
                    Queues.Add(queue.QueueIndex, named);
                }

                named.Counters.Add(queue.Counters, includeMomentary: true);
                named.Connected |= queue.Connected;
            }
        }
    }

    private sealed class NamedQueue
    {
        public RingCounters Counters { get; } = new();

        public bool Connected { get; set; }
    }
}
