namespace XenDisk.Xen.Simulated;

/// <summary>A disk the toolstack attached: who serves it, who sees it, and where its xenstore nodes are.</summary>
public sealed record DiskAttachment(
    SimulatedDomain Guest,
    SimulatedDomain Backend,
    int DeviceId,
    string Kind,
    string Target,
    bool ReadOnly,
    string BackendPath,
    string FrontendPath);
