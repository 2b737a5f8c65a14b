using XenDisk.Backend.ControlPlane;
using XenDisk.Backend.DataPlane;
using XenDisk.Service.Hosting;
using XenDisk.Service.Maintenance;
using XenDisk.Service.Storage;
using XenDisk.Storage;
using XenDisk.Telemetry;
using XenDisk.Telemetry.Collection;

namespace XenDisk.Service.Control;

/// <summary>Builds the status report from the backend's devices, the same counters telemetry exports, and each device's hydration.</summary>
internal sealed class StatusReporter(BackendStatisticsCollector collector, ServiceIdentity identity, HydrationManager hydrations, TimeProvider time,
    BlockBackend backend, ImageDiskProvider images)
{
    public ServiceStatusReport Report()
    {
        BackendSnapshot snapshot = collector.Collect();
        (int tracked, int shared) = backend.TrackedCounts;
        int overlays = images.GetOpenOverlays().Count;
        return new ServiceStatusReport(
            identity.Version,
            identity.Platform,
            identity.Simulated,
            identity.StartedAt,
            time.GetUtcNow(),
            [.. snapshot.Devices.Select(Device)],
            Tracked: new TrackedReport(tracked, shared, overlays));
    }

    private DeviceReport Device(DeviceCounters device)
    {
        DeviceStatus status = device.Status;
        var queues = device.Queues.Select(q =>
        {
            QueueStatus? live = status.Queues.FirstOrDefault(s => s.QueueIndex == q.QueueIndex);
            return new QueueReport(q.QueueIndex, q.Connected, live?.RingPageCount ?? 0, live?.Ring.Entries ?? 0,
                q.Counters.InFlight, q.Counters.Halted, q.Counters.TotalRequests, live?.Ring.EngineName ?? "", q.Counters.FastPathRequests);
        }).ToList();

        RingCounters total = device.Total;
        var operations = new List<OperationReport>(RingStatistics.OperationCount);
        for (int op = 0; op < RingStatistics.OperationCount; op++)
        {
            operations.Add(new OperationReport(
                XenDiskMetricNames.Values.Operations[op],
                total.Requests[op],
                total.Bytes[op],
                LatencyQuantiles.Estimate(total.LatencyBuckets[op], 0.50),
                LatencyQuantiles.Estimate(total.LatencyBuckets[op], 0.99)));
        }

        return new DeviceReport(
            status.BackendPath,
            status.Kind,
            status.FrontendDomainId,
            status.DeviceId,
            status.State.ToString(),
            status.FrontendPath,
            status.Disk is { } disk
                ? new DiskReport(disk.Description, disk.SizeBytes, disk.LogicalSectorSize, disk.ReadOnly, disk.SupportsDiscard, disk.HasVolatileCache)
                : null,
            status.ReadOnly,
            status.Protocol is { } protocol ? XenDisk.Abi.BlkifProtocolNames.ToWire(protocol) : null,
            status.Features is { } f ? new FeaturesReport(f.PersistentGrants, f.MaxIndirectSegments, f.Discard, f.SecureDiscard, f.ReadOnly, total.LargestRequestBytes) : null,
            queues,
            new CountersReport(operations, total.GuestErrors, total.StorageErrors, total.Unsupported, total.InFlight,
                total.NotificationsSent, total.NotificationsSuppressed, total.PersistentGrantHits, total.PersistentGrantMisses),
            status.Error,
            hydrations.Report(status.BackendPath),
            status.FrontendName,
            status.MetricsName);
    }
}
