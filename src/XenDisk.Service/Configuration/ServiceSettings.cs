using System.ComponentModel.DataAnnotations;
using Microsoft.Extensions.Options;
using XenDisk.Abi;
using XenDisk.Backend.ControlPlane;
using XenDisk.Backend.DataPlane;

namespace XenDisk.Service.Configuration;

// The configuration the service binds, one class per top-level section of xendisk.json (environment
// variables XENDISK_<Section>__<Key> override it). Attributes carry the single-field rules, checked by
// the source-generated validators in SettingsValidators.cs; rules that relate several fields live in
// SettingsRules.cs. ServiceConfiguration turns every message into one that starts with the
// configuration key it is about (the generated validators name the C# member instead).
//
// Lists default to null rather than to a populated list: the configuration binder appends to a list
// it finds already filled, so a default list would be merged with the configured one.

/// <summary>Section "Backend": what the blkif backend serves and offers (see <see cref="BackendOptions"/>).</summary>
public sealed class BackendSettings
{
    public const string SectionName = "Backend";

    /// <summary>libxl writes PV disks under backend/vbd.</summary>
    public static readonly IReadOnlyList<string> DefaultKinds = [BackendOptions.DefaultKind];

    /// <summary>Backend kinds to watch (vbd, vbd3); default ["vbd"].</summary>
    public List<string>? Kinds { get; set; }

    /// <summary>Serve only devices whose "script" key names this file (e.g. "xendisk"); null serves every device.</summary>
    public string? HotplugScript { get; set; }

    /// <summary>Published as max-ring-page-order; blkif.h allows at most 2^4 = 16 ring pages.</summary>
    [Range(0, BlkifLimits.MaxRingPageOrder)]
    public int MaxRingPageOrder { get; set; } = BackendOptions.DefaultMaxRingPageOrder;

    /// <summary>Null: one queue per CPU (Linux blkback's default).</summary>
    [Range(1, BackendOptions.MaxQueuesLimit)]
    public int? MaxQueues { get; set; }

    /// <summary>Published as feature-max-indirect-segments; 0 disables indirect requests, 4096 is 8 indirect pages of 512 segments.</summary>
    [Range(0, BlkifLimits.MaxIndirectSegments)]
    public int MaxIndirectSegments { get; set; } = BackendOptions.DefaultMaxIndirectSegments;

    public bool PersistentGrants { get; set; } = true;

    public bool Discard { get; set; } = true;

    /// <summary>"GrantMap" (default: map the guest's pages, fastest, persistent grants possible) or
    /// "GrantCopy" (copy through bounce buffers: no guest page is ever mapped by us).</summary>
    [Required]
    public string DataPath { get; set; } = nameof(Backend.DataPlane.DataPath.GrantMap);

    /// <summary>"Auto" (default: io_uring where the host allows it, the thread engine otherwise, said
    /// once in the log), "IoUring" (refuse to serve without it) or "Threads".</summary>
    [Required]
    public string IoEngine { get; set; } = nameof(Backend.DataPlane.IoEngine.Auto);

    [Range(1, DataPlaneOptions.MaxIoThreadsPerRing)]
    public int IoThreadsPerRing { get; set; } = new DataPlaneOptions().IoThreadsPerRing;

    /// <summary>Data operations per io_uring_enter while a busy ring is still being read; the maximum, the
    /// largest ring's slots, is a whole batch in one call.</summary>
    [Range(1, DataPlaneOptions.MaxSubmissionBatch)]
    public int SubmissionBatch { get; set; } = new DataPlaneOptions().SubmissionBatch;

    /// <summary>Where rings keep their in-flight records (absolute; kept across restarts, not reboots); empty to keep none.</summary>
    public string InflightDirectory { get; set; } = "/run/xendisk/inflight";

    [Range(1, 3600)]
    public int RingDrainTimeoutSeconds { get; set; } = (int)BackendOptions.DefaultRingDrainTimeout.TotalSeconds;

    /// <summary>Seconds between two looks at every disk's size (an lvextend reaches the guest as an online resize); 0 turns the look off.</summary>
    [Range(0, 3600)]
    public int SizeCheckSeconds { get; set; } = (int)BackendOptions.DefaultSizeCheckInterval.TotalSeconds;

    public IReadOnlyList<string> EffectiveKinds => Kinds ?? DefaultKinds;

    /// <summary>The backend's options; call only after validation.</summary>
    public BackendOptions ToBackendOptions(TimeProvider timeProvider) => new()
    {
        Kinds = [.. EffectiveKinds],
        HotplugScriptFilter = HotplugScript,
        MaxRingPageOrder = MaxRingPageOrder,
        MaxQueues = MaxQueues ?? BackendOptions.DefaultMaxQueues,
        MaxIndirectSegments = MaxIndirectSegments,
        PersistentGrants = PersistentGrants,
        Discard = Discard,
        RingDrainTimeout = TimeSpan.FromSeconds(RingDrainTimeoutSeconds),
        SizeCheckInterval = TimeSpan.FromSeconds(SizeCheckSeconds),
        InflightDirectory = string.IsNullOrEmpty(InflightDirectory) ? null : InflightDirectory,
        DataPlane = new DataPlaneOptions
        {
            DataPath = Enum.Parse<DataPath>(DataPath, ignoreCase: true),
            IoEngine = Enum.Parse<IoEngine>(IoEngine, ignoreCase: true),
            IoThreadsPerRing = IoThreadsPerRing,
            SubmissionBatch = SubmissionBatch,
            TimeProvider = timeProvider,
        },
    };
}

/// <summary>Section "Storage": which disk targets may be opened.</summary>
public sealed class StorageSettings
{
    public const string SectionName = "Storage";

    /// <summary>Where image files live on a typical XenDisk host.</summary>
    public static readonly IReadOnlyList<string> DefaultAllowedImageDirectories = ["/var/lib/xendisk/images"];

    /// <summary>Image files (raw images, overlays and their bases) must lie inside one of these directories,
    /// after symbolic links are resolved. Default ["/var/lib/xendisk/images"].</summary>
    public List<string>? AllowedImageDirectories { get; set; }

    /// <summary>Allow targets under /dev (block devices, LVM volumes).</summary>
    public bool AllowBlockDevices { get; set; } = true;

    public IReadOnlyList<string> EffectiveAllowedImageDirectories => AllowedImageDirectories ?? DefaultAllowedImageDirectories;
}

/// <summary>Section "Telemetry".</summary>
public sealed class TelemetrySettings
{
    public const string SectionName = "Telemetry";

    [ValidateObjectMembers]
    public PrometheusSettings Prometheus { get; set; } = new();

    [ValidateObjectMembers]
    public OtlpSettings Otlp { get; set; } = new();
}

/// <summary>Section "Telemetry:Prometheus": the scrape endpoint.</summary>
public sealed class PrometheusSettings
{
    /// <summary>Loopback only by default: the endpoint has no authentication.</summary>
    public const string DefaultListenAddress = "http://127.0.0.1:9464/metrics";

    public bool Enabled { get; set; } = true;

    [Required]
    public string ListenAddress { get; set; } = DefaultListenAddress;
}

/// <summary>Section "Telemetry:Otlp": push to an OpenTelemetry collector.</summary>
public sealed class OtlpSettings
{
    /// <summary>The OTLP/gRPC port of a collector on the same host.</summary>
    public const string DefaultEndpoint = "http://127.0.0.1:4317";

    public bool Enabled { get; set; }

    [Required]
    public string Endpoint { get; set; } = DefaultEndpoint;

    /// <summary>"Grpc" (port 4317) or "HttpProtobuf" (port 4318, endpoint ending in /v1/metrics).</summary>
    [Required]
    public string Protocol { get; set; } = "Grpc";

    [Range(1, 3600)]
    public int ExportIntervalSeconds { get; set; } = 15;
}

/// <summary>Section "Control": the local status socket.</summary>
public sealed class ControlSettings
{
    public const string SectionName = "Control";

    /// <summary>systemd's RuntimeDirectory=xendisk creates /run/xendisk.</summary>
    public const string DefaultSocketPath = "/run/xendisk/control.sock";

    [Required]
    public string SocketPath { get; set; } = DefaultSocketPath;
}

/// <summary>Section "Simulation": the demo guests of `xendisk serve --simulate`.</summary>
public sealed class SimulationSettings
{
    public const string SectionName = "Simulation";

    [Range(1, 8)]
    public int Guests { get; set; } = 2;

    [Range(16, 4096)]
    public int DiskSizeMiB { get; set; } = 64;

    /// <summary>Pause between one guest's verified operations: the workload is light, it is there to make metrics move.</summary>
    [Range(0, 10_000)]
    public int PauseMilliseconds { get; set; } = 5;

    /// <summary>Where the temporary images go (removed at stop); null: a new directory under the system temp directory.</summary>
    public string? ImageDirectory { get; set; }
}
