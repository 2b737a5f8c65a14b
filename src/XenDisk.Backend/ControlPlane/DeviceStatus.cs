using XenDisk.Abi;
using XenDisk.Backend.DataPlane;
using XenDisk.Storage;

namespace XenDisk.Backend.ControlPlane;

/// <summary>
/// A snapshot of one device for status displays and telemetry. Immutable; taken without waiting
/// for the device's control work. The <see cref="QueueStatus.Ring"/> objects are live: read their
/// statistics, never stop or dispose them (the control plane owns them).
/// </summary>
public sealed record DeviceStatus
{
    /// <summary>The device's backend directory, /local/domain/&lt;backend&gt;/backend/&lt;kind&gt;/&lt;domid&gt;/&lt;devid&gt;.</summary>
    public required string BackendPath { get; init; }

    public required string Kind { get; init; }

    public required uint FrontendDomainId { get; init; }

    public required int DeviceId { get; init; }

    /// <summary>The frontend domain's name (/local/domain/&lt;domid&gt;/name), once read; a rebooted guest keeps it.</summary>
    public string? FrontendName { get; init; }

    /// <summary>
    /// What metrics call the device (xendisk.device): the guest's name and the device id, "web1/51712".
    /// A guest's reboot gives it a new domain id, so a new backend path and a new device, under the
    /// same name: its disk's series carry on instead of leaving one stale set per boot behind, which a
    /// cumulative exporter would keep for the life of the process. "domain-&lt;domid&gt;" stands in for
    /// a name not (yet) read.
    /// </summary>
    public string MetricsName => string.Create(System.Globalization.CultureInfo.InvariantCulture,
        $"{FrontendName ?? "domain-" + FrontendDomainId.ToString(System.Globalization.CultureInfo.InvariantCulture)}/{DeviceId}");

    /// <summary>The state we last published in the backend "state" key.</summary>
    public required XenbusState State { get; init; }

    /// <summary>The frontend directory from the toolstack's "frontend" key, once read.</summary>
    public string? FrontendPath { get; init; }

    /// <summary>The open disk's size and capabilities; null before it is opened and after it is closed.</summary>
    public BlockDeviceInfo? Disk { get; init; }

    /// <summary>True when the guest sees the disk read-only (mode=r or a read-only disk).</summary>
    public bool ReadOnly { get; init; }

    /// <summary>What was agreed with the frontend; null while not connected.</summary>
    public NegotiatedFeatures? Features { get; init; }

    public BlkifProtocol? Protocol { get; init; }

    /// <summary>The connected queues; empty while not connected.</summary>
    public IReadOnlyList<QueueStatus> Queues { get; init; } = [];

    /// <summary>The last failure written to the device's "error" node, if any.</summary>
    public string? Error { get; init; }
}

/// <summary>One connected queue (ring) of a device.</summary>
public sealed record QueueStatus(int QueueIndex, int RingPageCount, uint RemotePort, uint LocalPort, BlkifRing Ring);
