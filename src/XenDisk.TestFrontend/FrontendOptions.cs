using XenDisk.Abi;

namespace XenDisk.TestFrontend;

/// <summary>How a multi-page ring is announced: blkif.h's "ring-page-order", or the older "num-ring-pages".</summary>
public enum RingKeySpelling
{
    RingPageOrder,
    NumRingPages,
}

/// <summary>
/// What the frontend asks for; each request is capped by what the backend offers, as blkfront
/// does, unless one of the Force*/Skip* "misbehave" settings says otherwise.
/// </summary>
public sealed record FrontendOptions
{
    /// <summary>blkfront's default max_indirect_segments (xen_blkif_max_segments).</summary>
    public const int DefaultMaxIndirectSegments = 32;

    public BlkifProtocol Protocol { get; init; } = BlkifProtocol.X86_64;

    /// <summary>Queues wanted; the frontend uses min(this, multi-queue-max-queues).</summary>
    public int Queues { get; init; } = 1;

    /// <summary>Ring order wanted (2^order pages); the frontend uses min(this, max-ring-page-order).</summary>
    public int RingPageOrder { get; init; }

    public RingKeySpelling RingKeySpelling { get; init; } = RingKeySpelling.RingPageOrder;

    /// <summary>Use indirect requests when the backend offers feature-max-indirect-segments.</summary>
    public bool UseIndirect { get; init; } = true;

    /// <summary>The cap on indirect segments per request (the backend's offer is also a cap).</summary>
    public int MaxIndirectSegments { get; init; } = DefaultMaxIndirectSegments;

    /// <summary>Write feature-persistent=1 and, when the backend agrees, keep data pages granted and reuse them.</summary>
    public bool UsePersistentGrants { get; init; } = true;

    /// <summary>How long to wait for each backend state change.</summary>
    public TimeSpan StateTimeout { get; init; } = TimeSpan.FromSeconds(10);

    // Misbehaviour, for testing the backend's validation.

    /// <summary>Publish this many queues whatever the backend offered (1 still writes the single-queue layout).</summary>
    public int? ForceQueueCount { get; init; }

    /// <summary>Publish this ring order whatever the backend offered.</summary>
    public int? ForceRingPageOrder { get; init; }

    /// <summary>Do not write the "protocol" key (the backend must then assume the native ABI).</summary>
    public bool SkipProtocolKey { get; init; }

    /// <summary>Write this as "protocol" instead of the real ABI name.</summary>
    public string? ProtocolKeyOverride { get; init; }

    /// <summary>Keys (relative to the frontend directory) written last in the publishing transaction, overriding anything.</summary>
    public IReadOnlyDictionary<string, string>? ExtraKeys { get; init; }

    /// <summary>Keys (relative to the frontend directory) removed at the end of the publishing transaction.</summary>
    public IReadOnlyList<string>? OmitKeys { get; init; }
}
