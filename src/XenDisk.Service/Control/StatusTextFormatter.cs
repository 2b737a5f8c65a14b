using System.Globalization;
using System.Text;
using XenDisk.Backend.DataPlane;

namespace XenDisk.Service.Control;

/// <summary>`xendisk status` for people: a header line, then per device its identity, disk, features,
/// queues and a table of counters with p50/p99 latency per operation.</summary>
public static class StatusTextFormatter
{
    public static string Format(ServiceStatusReport report)
    {
        ArgumentNullException.ThrowIfNull(report);
        var text = new StringBuilder();
        TimeSpan up = report.TakenAt - report.StartedAt;
        text.Append(CultureInfo.InvariantCulture, $"xendisk {report.Version} on {report.Platform}, up {(int)up.TotalHours}:{up:mm\\:ss}, {report.Devices.Count} device(s)\n");
        if (report.Memory is { } memory)
        {
            text.Append(CultureInfo.InvariantCulture,
                $"memory: {Bytes(memory.ResidentBytes)} resident ({Bytes(memory.AnonymousBytes)} anonymous), managed heap {Bytes(memory.ManagedHeapBytes)} ({Bytes(memory.ManagedFragmentedBytes)} free) of {Bytes(memory.ManagedCommittedBytes)} committed, {memory.FullCollections} full collection(s){(memory.Collected ? ", just collected" : "")}\n");
        }
        foreach (DeviceReport device in report.Devices)
        {
            text.Append('\n');
            text.Append(CultureInfo.InvariantCulture, $"{device.BackendPath}\n");
            text.Append(CultureInfo.InvariantCulture, $"  frontend  domain {device.FrontendDomainId}{(device.FrontendName is null ? "" : " (" + device.FrontendName + ")")}, device {device.DeviceId}, {device.State}{(device.FrontendPath is null ? "" : " (" + device.FrontendPath + ")")}\n");
            if (device.Disk is { } disk)
            {
                text.Append(CultureInfo.InvariantCulture,
                    $"  disk      {disk.Description} ({Bytes(disk.SizeBytes)}, {disk.LogicalSectorSize} B sectors, {(device.ReadOnly ? "read-only" : "read-write")}{(disk.SupportsDiscard ? ", discard" : "")})\n");
            }

            if (device.Features is { } f)
            {
                var features = new List<string> { device.Protocol ?? "x86_64-abi" };
                features.Add(f.PersistentGrants ? "persistent grants" : "no persistent grants");
                features.Add(Indirect(f));
                if (f.Discard)
                {
                    features.Add(f.SecureDiscard ? "discard (secure)" : "discard");
                }

                text.Append(CultureInfo.InvariantCulture, $"  features  {string.Join(", ", features)}\n");
            }

            if (device.Queues.Count > 0)
            {
                text.Append("  queues    ");
                text.AppendJoin("; ", device.Queues.Select(q => q.Connected
                    ? string.Create(CultureInfo.InvariantCulture, $"{q.Index}: {q.RingPages} page(s), {q.Entries} slots, {q.InFlight} in flight{Engine(q)}{(q.Halted ? ", HALTED" : "")}")
                    : string.Create(CultureInfo.InvariantCulture, $"{q.Index}: gone")));
                text.Append('\n');
            }

            if (device.Error is not null)
            {
                text.Append(CultureInfo.InvariantCulture, $"  error     {device.Error}\n");
            }

            if (device.Hydration is { } hydration)
            {
                text.Append(CultureInfo.InvariantCulture, $"  hydration {Hydration(hydration)}\n");
            }

            text.Append(CultureInfo.InvariantCulture, $"  {"operation",-10}{"requests",12}{"bytes",12}{"p50",11}{"p99",11}\n");
            foreach (OperationReport op in device.Counters.Operations)
            {
                text.Append(CultureInfo.InvariantCulture,
                    $"  {op.Operation,-10}{op.Requests,12}{Bytes(op.Bytes),12}{Duration(op.P50Seconds),11}{Duration(op.P99Seconds),11}\n");
            }

            CountersReport c = device.Counters;
            text.Append(CultureInfo.InvariantCulture,
                $"  errors    guest {c.GuestErrors}, storage {c.StorageErrors}, unsupported {c.Unsupported}; in flight {c.InFlight}\n");
        }

        return text.ToString();
    }

    /// <summary>
    /// What the guest does with indirect requests, as far as the backend can tell: it offers up to
    /// feature-max-indirect-segments, and the frontend never says what it took, so "in use" is shown
    /// only once a request too large for a direct one arrived.
    /// </summary>
    internal static string Indirect(FeaturesReport features)
    {
        if (features.MaxIndirectSegments == 0)
        {
            return "no indirect (not offered)";
        }

        return features.IndirectInUse
            ? string.Create(CultureInfo.InvariantCulture, $"indirect in use (up to {features.MaxIndirectSegments} segments offered, largest request {Bytes(features.LargestRequestBytes)})")
            : string.Create(CultureInfo.InvariantCulture, $"indirect not used so far ({features.MaxIndirectSegments} segments offered)");
    }

    /// <summary>
    /// How a queue's ring runs its I/O, and how much of it the ring thread moved itself, as a clause
    /// (", io_uring, 100% of requests on the fast path"; nothing before the ring has started): "threads"
    /// on a host without io_uring says why the ring is slower than it could be; on an overlay, what is not
    /// on the fast path is its flushes and its allocation (first writes, copy-up).
    /// </summary>
    internal static string Engine(QueueReport queue)
    {
        if (queue.Engine.Length == 0)
        {
            return "";
        }

        if (queue.Requests == 0 || queue.Engine != BlkifRing.IoUringEngineName)
        {
            return ", " + queue.Engine;
        }

        return string.Create(CultureInfo.InvariantCulture, $", {queue.Engine}, {100.0 * queue.FastPathRequests / queue.Requests:F0}% of requests on the fast path");
    }

    /// <summary>One line: the state, how far, the limit, and why it stopped when it did not finish.</summary>
    public static string Hydration(HydrationReport hydration)
    {
        ArgumentNullException.ThrowIfNull(hydration);
        var line = new StringBuilder(hydration.State);
        double percent = hydration.BytesTotal > 0 ? 100.0 * hydration.BytesDone / hydration.BytesTotal : 0;
        line.Append(CultureInfo.InvariantCulture, $", {Bytes(hydration.BytesDone)} of {Bytes(hydration.BytesTotal)} ({percent:0.0}%)");
        if (hydration.BytesCopied is { } copied)
        {
            line.Append(CultureInfo.InvariantCulture, $", {Bytes(copied)} copied");
        }

        if (hydration.IsRunning)
        {
            line.Append(hydration.BytesPerSecond > 0 ? $", at most {Bytes(hydration.BytesPerSecond)}/s" : ", no rate limit");
        }
        else if (hydration.State == HydrationStates.Finished)
        {
            line.Append("; the overlay no longer needs its base");
        }

        if (hydration.Error is not null)
        {
            line.Append(": ").Append(hydration.Error);
        }

        return line.ToString();
    }

    internal static string Bytes(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        double value = bytes;
        int unit = 0;
        while (value >= 1024 && unit < units.Length - 1)
        {
            value /= 1024;
            unit++;
        }

        return unit == 0
            ? string.Create(CultureInfo.InvariantCulture, $"{bytes} B")
            : string.Create(CultureInfo.InvariantCulture, $"{value:0.0} {units[unit]}");
    }

    internal static string Duration(double? seconds) => seconds switch
    {
        null => "-",
        < 1e-3 => string.Create(CultureInfo.InvariantCulture, $"{seconds * 1e6:0.0} us"),
        < 1 => string.Create(CultureInfo.InvariantCulture, $"{seconds * 1e3:0.00} ms"),
        _ => string.Create(CultureInfo.InvariantCulture, $"{seconds:0.00} s"),
    };
}
