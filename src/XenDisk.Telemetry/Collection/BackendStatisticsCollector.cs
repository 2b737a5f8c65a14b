using XenDisk.Backend.ControlPlane;
using XenDisk.Backend.DataPlane;

namespace XenDisk.Telemetry.Collection;

/// <summary>Where the collector finds the devices to report: the running <see cref="BlockBackend"/> in the service.</summary>
public interface IDeviceStatusSource
{
    /// <summary>A snapshot of every device served, as <see cref="BlockBackend.Devices"/> returns it.</summary>
    IReadOnlyList<DeviceStatus> GetDevices();
}

/// <summary>Reads <see cref="BlockBackend.Devices"/>.</summary>
public sealed class BlockBackendStatusSource(BlockBackend backend) : IDeviceStatusSource
{
    public IReadOnlyList<DeviceStatus> GetDevices() => backend.Devices;
}

/// <summary>One queue's counters: the rings it had before (retired) plus the ring it has now.</summary>
public sealed record QueueCounters(int QueueIndex, bool Connected, RingCounters Counters);

/// <summary>One device: its status, its queues, and their sum.</summary>
public sealed record DeviceCounters(DeviceStatus Status, RingCounters Total, IReadOnlyList<QueueCounters> Queues);

/// <summary>Every device at one moment.</summary>
public sealed record BackendSnapshot(DateTimeOffset TakenAt, IReadOnlyList<DeviceCounters> Devices);

/// <summary>
/// Sums the data plane's per-ring counters into per-queue and per-device totals when asked (at export
/// time), so the data plane records nothing for these counters beyond its own statistics.
///
/// A ring lives only as long as one connection: when a frontend reconnects (or the backend restarts a
/// queue) the device gets new rings whose counters start at zero. So that exported counters stay
/// monotonic for as long as the device exists, the collector keeps, per device and queue index, the
/// final counts of the rings it saw go away ("retired") and adds the current ring's counts to them.
/// A device that disappears from the backend is forgotten, and its series restart at zero if it comes
/// back, which Prometheus' rate() reads as a counter reset.
///
/// Snapshots are cached for <see cref="MaximumAge"/>: one export calls every instrument's callback in
/// turn, and they should all describe the same moment. Thread-safe.
/// </summary>
public sealed class BackendStatisticsCollector
{
    /// <summary>Long enough to serve every callback of one collection, far shorter than any scrape interval.</summary>
    public static readonly TimeSpan DefaultMaximumAge = TimeSpan.FromMilliseconds(200);

    private readonly IDeviceStatusSource _source;
    private readonly TimeProvider _time;
    private readonly Lock _lock = new();
    private readonly Dictionary<string, Dictionary<int, QueueState>> _devices = new(StringComparer.Ordinal);
    private BackendSnapshot? _cached;
    private long _cachedAtTimestamp;

    public BackendStatisticsCollector(IDeviceStatusSource source, TimeProvider? timeProvider = null, TimeSpan? maximumAge = null)
    {
        ArgumentNullException.ThrowIfNull(source);
        _source = source;
        _time = timeProvider ?? TimeProvider.System;
        MaximumAge = maximumAge ?? DefaultMaximumAge;
    }

    public TimeSpan MaximumAge { get; }

    /// <summary>Where the devices come from (also where <see cref="XenDiskMetrics.AttachRings"/> finds the rings).</summary>
    public IDeviceStatusSource Source => _source;

    /// <summary>The latest snapshot, taken anew when the cached one is older than <see cref="MaximumAge"/>.</summary>
    public BackendSnapshot GetSnapshot()
    {
        lock (_lock)
        {
            if (_cached is not null && _time.GetElapsedTime(_cachedAtTimestamp) < MaximumAge)
            {
                return _cached;
            }

            return CollectLocked();
        }
    }

    /// <summary>A snapshot taken now.</summary>
    public BackendSnapshot Collect()
    {
        lock (_lock)
        {
            return CollectLocked();
        }
    }

    private BackendSnapshot CollectLocked()
    {
        IReadOnlyList<DeviceStatus> statuses = _source.GetDevices();
        var present = new HashSet<string>(StringComparer.Ordinal);
        var devices = new List<DeviceCounters>(statuses.Count);
        foreach (DeviceStatus status in statuses)
        {
            present.Add(status.BackendPath);
            if (!_devices.TryGetValue(status.BackendPath, out Dictionary<int, QueueState>? queues))
            {
                queues = [];
                _devices.Add(status.BackendPath, queues);
            }

            devices.Add(CollectDevice(status, queues));
        }

        foreach (string gone in _devices.Keys.Where(path => !present.Contains(path)).ToList())
        {
            _devices.Remove(gone);
        }

        _cachedAtTimestamp = _time.GetTimestamp();
        _cached = new BackendSnapshot(_time.GetUtcNow(), devices);
        return _cached;
    }

    private static DeviceCounters CollectDevice(DeviceStatus status, Dictionary<int, QueueState> queues)
    {
        var connected = new Dictionary<int, RingStatistics>();
        foreach (QueueStatus queue in status.Queues)
        {
            connected[queue.QueueIndex] = queue.Ring.Statistics;
        }

        foreach ((int index, RingStatistics statistics) in connected)
        {
            if (!queues.TryGetValue(index, out QueueState? state))
            {
                state = new QueueState();
                queues.Add(index, state);
            }

            if (!ReferenceEquals(state.Current, statistics))
            {
                state.Retire();
                state.Current = statistics;
            }
        }

        var total = new RingCounters();
        var queueCounters = new List<QueueCounters>(queues.Count);
        foreach ((int index, QueueState state) in queues.OrderBy(q => q.Key))
        {
            if (!connected.ContainsKey(index))
            {
                state.Retire();
            }

            RingCounters counters = state.Retired.CloneCumulative();
            if (state.Current is not null)
            {
                counters.Add(RingCounters.Read(state.Current), includeMomentary: true);
            }

            total.Add(counters, includeMomentary: true);
            queueCounters.Add(new QueueCounters(index, state.Current is not null, counters));
        }

        return new DeviceCounters(status, total, queueCounters);
    }

    private sealed class QueueState
    {
        public RingStatistics? Current { get; set; }

        public RingCounters Retired { get; } = new();

        /// <summary>The ring is gone (stopped, or replaced by a reconnect): keep its final counts.</summary>
        public void Retire()
        {
            if (Current is not null)
            {
                Retired.Add(RingCounters.Read(Current), includeMomentary: false);
                Current = null;
            }
        }
    }
}
