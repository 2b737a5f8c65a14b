using XenDisk.Xen.Simulated.EventChannels;
using XenDisk.Xen.Simulated.Grants;
using XenDisk.Xen.Simulated.Memory;
using XenDisk.Xen.Simulated.XenStore;
using Tmds.Linux;

namespace XenDisk.Xen.Simulated;

/// <summary>
/// A simulated domain: its memory (real shared pages), the grant table it publishes, its
/// event-channel ports and its xenstore home. The guest-side members (<see cref="AllocatePage"/>,
/// <see cref="GrantAccess"/>, <see cref="EndAccess"/>) are what a frontend driver inside the
/// domain would do through the kernel's gnttab API. They are thread-safe.
/// </summary>
public sealed class SimulatedDomain
{
    private readonly SimulatedHypervisor _hypervisor;
    private long _notificationsDelivered;
    private volatile bool _destroyed;

    internal SimulatedDomain(SimulatedHypervisor hypervisor, uint id, string name, int memoryPages)
    {
        _hypervisor = hypervisor;
        Id = id;
        Name = name;
        Memory = GuestMemory.Create(name, memoryPages);
        Grants = new GrantEntryTable(Memory);
    }

    public uint Id { get; }

    public string Name { get; }

    public int MemoryPages => Memory.PageCount;

    /// <summary>"/local/domain/{Id}".</summary>
    public string XenStorePath => XenStore.XenStorePath.DomainPath(Id);

    public bool IsDestroyed => _destroyed;

    /// <summary>Events delivered to any event-channel handle of this domain (a coalesced burst counts once).</summary>
    public long NotificationsDelivered => Interlocked.Read(ref _notificationsDelivered);

    /// <summary>Grant entries this domain currently has granted.</summary>
    public int ActiveGrants => Grants.ActiveCount;

    /// <summary>The ops table for code running in this domain.</summary>
    public IXenPlatform Platform => _hypervisor.Platform(this);

    internal GuestMemory Memory { get; }

    internal GrantEntryTable Grants { get; }

    /// <summary>Port table, indexed by port number; guarded by the hypervisor's event-channel lock.</summary>
    internal List<EventPort?> EventPorts { get; } = [];

    public GuestPage AllocatePage()
    {
        GuestPageRange range = AllocatePages(1);
        return range[0];
    }

    /// <summary>Consecutive frames (one contiguous range in the guest's view), e.g. for a multi-page ring.</summary>
    public GuestPageRange AllocatePages(int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(count);
        if (!Memory.TryAllocate(count, out uint first))
        {
            throw new XenException("alloc_pages", LibC.ENOMEM, $"domain {Id} has no {count} free consecutive pages");
        }

        return new GuestPageRange(first, count, Memory.FrameAddress(first));
    }

    /// <summary>Returns a page; the caller must have ended every grant of it first.</summary>
    public void FreePage(GuestPage page) => Memory.Free(page.Frame, 1);

    public void FreePages(GuestPageRange range) => Memory.Free(range.FirstFrame, range.Count);

    /// <summary>The page with frame number <paramref name="frame"/>, as this domain sees it.</summary>
    public GuestPage PageAt(uint frame) =>
        Memory.IsValidFrame(frame) ? new GuestPage(frame, Memory.FrameAddress(frame)) : throw new ArgumentOutOfRangeException(nameof(frame));

    /// <summary>gnttab_grant_foreign_access: lets <paramref name="granteeDomainId"/> map or copy the page. Returns the grant ref.</summary>
    public uint GrantAccess(uint granteeDomainId, GuestPage page, bool readOnly)
    {
        if (!Memory.IsAllocated(page.Frame) || page.Address != Memory.FrameAddress(page.Frame))
        {
            throw new ArgumentException("The page is not an allocated page of this domain.", nameof(page));
        }

        return Grants.Grant(granteeDomainId, page.Frame, readOnly);
    }

    /// <summary>
    /// gnttab_end_foreign_access_ref: revokes the grant and frees the ref. Returns false, and the
    /// grant stays, while the grantee still has the page mapped (or when the ref is not granted).
    /// </summary>
    public bool EndAccess(uint grantRef) => Grants.End(grantRef);

    /// <summary>True while some domain has the granted page mapped.</summary>
    public bool IsMapped(uint grantRef) => Grants.IsMapped(grantRef);

    public bool IsGranted(uint grantRef) => Grants.IsGranted(grantRef);

    public override string ToString() => $"domain {Id} ({Name})";

    internal void MarkDestroyed() => _destroyed = true;

    internal void CountNotificationDelivered() => Interlocked.Increment(ref _notificationsDelivered);
}
