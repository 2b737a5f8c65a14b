using System.Globalization;
using XenDisk.Abi;
using XenDisk.Backend.DataPlane;

namespace XenDisk.Backend.ControlPlane;

/// <summary>
/// What <see cref="BlockBackend"/> serves and what it offers each frontend. Validated once, at
/// <see cref="BlockBackend.StartAsync"/>; every limit is a named constant with the reason for its value.
/// </summary>
public sealed record BackendOptions
{
    /// <summary>libxl's backend kind for PV disks (backend/vbd); "vbd3" is the kind a tapdisk3-style toolstack uses.</summary>
    public const string DefaultKind = "vbd";

    /// <summary>Linux blkback's default (xen_blkif_max_ring_order = XENBUS_MAX_RING_GRANT_ORDER): 16 pages,
    /// the most blkif.h allows, so a deep guest queue is never limited by the ring.</summary>
    public const int DefaultMaxRingPageOrder = BlkifLimits.MaxRingPageOrder;

    /// <summary>Linux blkback's MAX_INDIRECT_SEGMENTS: 256 segments = 1 MiB per request, the size Linux
    /// blkfront asks for by default; larger values only cost memory per ring slot.</summary>
    public const int DefaultMaxIndirectSegments = 256;

    /// <summary>A queue is a ring thread plus mapped pages; more queues than this only add threads that
    /// compete for the same cores. Linux blkfront itself caps its queue count near the CPU count.</summary>
    public const int MaxQueuesLimit = 256;

    /// <summary>Linux blkback's default queue count (xenblk_max_queues = num_online_cpus): one ring per
    /// core the guest could issue from, capped by <see cref="MaxQueuesLimit"/>.</summary>
    public static int DefaultMaxQueues => Math.Clamp(Environment.ProcessorCount, 1, MaxQueuesLimit);

    /// <summary>How long a ring may take to finish its in-flight I/O when the device disconnects. A
    /// ring that does not drain in time keeps its mapping (I/O threads may still touch the pages):
    /// a leak reported in the log beats a write into unmapped memory.</summary>
    public static readonly TimeSpan DefaultRingDrainTimeout = TimeSpan.FromSeconds(30);

    /// <summary>How often every served disk's size is looked at, so that an <c>lvextend</c>, a grown
    /// file or a resized LUN reaches the guest as an online resize. Linux blkback looks on every pass
    /// of its ring thread (xen_vbd_resize); one size query per disk every two seconds costs nothing
    /// measurable and shows the change to the guest before an operator looks for it.</summary>
    public static readonly TimeSpan DefaultSizeCheckInterval = TimeSpan.FromSeconds(2);

    /// <summary>Backend kinds to serve: each is watched at /local/domain/&lt;LocalDomainId&gt;/backend/&lt;kind&gt;.</summary>
    public IReadOnlyList<string> Kinds { get; init; } = [DefaultKind];

    /// <summary>
    /// Null: serve every device of <see cref="Kinds"/>. Otherwise serve only devices whose "script"
    /// key names a file with exactly this name (for example "xendisk" for script=/etc/xen/scripts/xendisk)
    /// and leave every other device alone, so that another backend (blkback, qemu) can serve them.
    /// </summary>
    public string? HotplugScriptFilter { get; init; }

    /// <summary>Published as max-ring-page-order: the frontend may use rings of up to 2^order pages.</summary>
    public int MaxRingPageOrder { get; init; } = DefaultMaxRingPageOrder;

    /// <summary>Published as multi-queue-max-queues.</summary>
    public int MaxQueues { get; init; } = DefaultMaxQueues;

    /// <summary>Published as feature-max-indirect-segments; 0 offers no indirect requests.
    /// At most <see cref="BlkifLimits.MaxIndirectSegments"/> (8 indirect pages of 512 segments).</summary>
    public int MaxIndirectSegments { get; init; } = DefaultMaxIndirectSegments;

    /// <summary>Offer feature-persistent: the frontend may keep its data pages granted and we keep them mapped.</summary>
    public bool PersistentGrants { get; init; } = true;

    /// <summary>Offer feature-discard for writable disks that support it.</summary>
    public bool Discard { get; init; } = true;

    /// <inheritdoc cref="DefaultRingDrainTimeout"/>
    public TimeSpan RingDrainTimeout { get; init; } = DefaultRingDrainTimeout;

    /// <inheritdoc cref="DefaultSizeCheckInterval"/> <see cref="TimeSpan.Zero"/> turns the check off
    /// (a resize then reaches the guest only through <see cref="BlockBackend.ResizeAsync"/>).
    public TimeSpan SizeCheckInterval { get; init; } = DefaultSizeCheckInterval;

    public DataPlaneOptions DataPlane { get; init; } = new();

    /// <summary>
    /// Where each ring keeps its in-flight record, so that a backend that was killed is restarted
    /// without losing or repeating a request (null: no records, a kill can break the guest's disk).
    /// Must survive the process and not the host: /run/xendisk/inflight under systemd.
    /// </summary>
    public string? InflightDirectory { get; init; }

    /// <summary>Every problem with these options, one operator-readable sentence each; empty when valid.</summary>
    public IReadOnlyList<string> GetValidationErrors()
    {
        var errors = new List<string>();
        if (Kinds is null || Kinds.Count == 0)
        {
            errors.Add("Kinds must name at least one backend kind (for example \"vbd\").");
        }
        else
        {
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (string kind in Kinds)
            {
                if (!BackendPaths.IsPathComponent(kind))
                {
                    errors.Add($"Kinds: \"{kind}\" is not a single xenstore path component.");
                }
                else if (!seen.Add(kind))
                {
                    errors.Add($"Kinds: \"{kind}\" is listed twice.");
                }
            }
        }

        if (HotplugScriptFilter is not null && (HotplugScriptFilter.Length == 0 || HotplugScriptFilter.Contains('/', StringComparison.Ordinal)))
        {
            errors.Add("HotplugScriptFilter must be a file name without a directory (for example \"xendisk\"), or null to serve every device.");
        }

        if ((uint)MaxRingPageOrder > BlkifLimits.MaxRingPageOrder)
        {
            errors.Add(Invariant($"MaxRingPageOrder must be between 0 and {BlkifLimits.MaxRingPageOrder} (blkif.h allows at most 16 ring pages); it is {MaxRingPageOrder}."));
        }

        if (MaxQueues is < 1 or > MaxQueuesLimit)
        {
            errors.Add(Invariant($"MaxQueues must be between 1 and {MaxQueuesLimit}; it is {MaxQueues}."));
        }

        if ((uint)MaxIndirectSegments > BlkifLimits.MaxIndirectSegments)
        {
            errors.Add(Invariant($"MaxIndirectSegments must be between 0 and {BlkifLimits.MaxIndirectSegments} (8 indirect pages of 512 segments); it is {MaxIndirectSegments}."));
        }

        if (RingDrainTimeout <= TimeSpan.Zero && RingDrainTimeout != Timeout.InfiniteTimeSpan)
        {
            errors.Add("RingDrainTimeout must be positive (or infinite).");
        }

        if (SizeCheckInterval < TimeSpan.Zero)
        {
            errors.Add("SizeCheckInterval must be positive, or zero to turn the size check off.");
        }

        if (DataPlane is null)
        {
            errors.Add("DataPlane options are required.");
        }
        else
        {
            try
            {
                DataPlane.Validate();
            }
            catch (ArgumentException e)
            {
                errors.Add("DataPlane: " + e.Message);
            }
        }

        return errors;
    }

    /// <summary>Throws <see cref="ArgumentException"/> listing every problem when the options are not valid.</summary>
    public void Validate()
    {
        IReadOnlyList<string> errors = GetValidationErrors();
        if (errors.Count > 0)
        {
            throw new ArgumentException("Invalid backend options: " + string.Join(" ", errors));
        }
    }

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
}
