namespace XenDisk.Abi;

/// <summary>The xenstore key names of the blkif protocol (blkif.h "Feature and Parameter Negotiation").</summary>
public static class BlkifKeys
{
    // Written by the toolstack into the backend directory.
    public const string Params = "params";
    public const string Mode = "mode";
    public const string Type = "type";
    public const string Frontend = "frontend";
    public const string FrontendId = "frontend-id";
    public const string Online = "online";
    public const string State = "state";
    public const string Script = "script";
    public const string Removable = "removable";
    public const string DeviceType = "device-type";

    // Written by the backend.
    public const string Sectors = "sectors";
    public const string SectorSize = "sector-size";
    public const string PhysicalSectorSize = "physical-sector-size";
    public const string Info = "info";
    public const string FeatureBarrier = "feature-barrier";
    public const string FeatureFlushCache = "feature-flush-cache";
    public const string FeatureDiscard = "feature-discard";
    public const string DiscardGranularity = "discard-granularity";
    public const string DiscardAlignment = "discard-alignment";
    public const string DiscardSecure = "discard-secure";
    public const string FeatureMaxIndirectSegments = "feature-max-indirect-segments";
    public const string FeaturePersistent = "feature-persistent";
    public const string MultiQueueMaxQueues = "multi-queue-max-queues";
    public const string MaxRingPageOrder = "max-ring-page-order";
    public const string MaxRingPages = "max-ring-pages";
    public const string HotplugStatus = "hotplug-status";
    public const string Error = "error";

    /// <summary>
    /// XenDisk's own: written ("1") with the disk's keys once the disk is open, removed with every new
    /// InitWait; the hotplug script reports the device ready only when it finds this, or fails on
    /// "error" (docs/E2E.md, "Hotplug contract").
    /// </summary>
    public const string DiskOpened = "disk-opened";
    public const string PhysicalDevice = "physical-device";

    // Written by the frontend.
    public const string RingRef = "ring-ref";
    public const string RingPageOrder = "ring-page-order";
    public const string NumRingPages = "num-ring-pages";
    public const string EventChannel = "event-channel";
    public const string Protocol = "protocol";
    public const string MultiQueueNumQueues = "multi-queue-num-queues";
    public const string VirtualDevice = "virtual-device";

    /// <summary>"ring-ref{i}" of a multi-page ring.</summary>
    public static string RingRefN(int index) => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"ring-ref{index}");

    /// <summary>"queue-{i}": the per-queue subtree of a multi-queue frontend.</summary>
    public static string Queue(int index) => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"queue-{index}");
}
