using XenDisk.Abi;

namespace XenDisk.TestFrontend;

/// <summary>What the frontend and the backend agreed on, and the disk the backend described.</summary>
public sealed record NegotiatedFrontendFeatures
{
    public required BlkifProtocol Protocol { get; init; }

    public required int Queues { get; init; }

    public required int RingPageOrder { get; init; }

    /// <summary>Slots per ring.</summary>
    public required int RingEntries { get; init; }

    /// <summary>Segments one request carries: 11, or the indirect maximum when indirect requests are used.</summary>
    public required int MaxSegmentsPerRequest { get; init; }

    /// <summary>0 when indirect requests are not used.</summary>
    public required int IndirectSegments { get; init; }

    /// <summary>Both ends offered feature-persistent.</summary>
    public required bool PersistentGrants { get; init; }

    public required bool FlushCache { get; init; }

    public required bool Barrier { get; init; }

    public required bool Discard { get; init; }

    public required uint DiscardGranularity { get; init; }

    public required uint DiscardAlignment { get; init; }

    public required bool DiscardSecure { get; init; }

    /// <summary>Disk size in 512-byte sectors (blkif.h: "sectors" is always in 512-byte units).</summary>
    public required ulong Sectors { get; init; }

    public required uint SectorSize { get; init; }

    public required uint PhysicalSectorSize { get; init; }

    public required VdiskInfo Info { get; init; }

    /// <summary>What the backend offered, before capping.</summary>
    public required int BackendMaxQueues { get; init; }

    public required int BackendMaxRingPageOrder { get; init; }

    public required int BackendMaxIndirectSegments { get; init; }
}

/// <summary>How a disconnect went. Anything non-zero here is a leak on the backend's side.</summary>
public sealed record FrontendDisconnectResult(
    bool BackendReachedClosed,
    int RingGrantsStillMapped,
    int DataGrantsStillMapped,
    int RequestsFailed);
