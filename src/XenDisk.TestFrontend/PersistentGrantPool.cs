using XenDisk.Xen.Simulated;

namespace XenDisk.TestFrontend;

/// <summary>A guest page granted to the backend, and its ref.</summary>
public readonly record struct GrantedPage(GuestPage Page, uint GrantRef);

/// <summary>
/// Pages granted read-write to the backend once and reused (blkfront's persistent grants list).
/// Ownership: the pool owns every page it ever granted; renters return them; <see cref="EndAll"/>
/// runs after the backend closed, when it must have unmapped them all.
/// </summary>
internal sealed class PersistentGrantPool
{
    private readonly SimulatedDomain _guest;
    private readonly uint _backendId;
    private readonly Lock _lock = new();
    private readonly Stack<GrantedPage> _free = new();
    private readonly List<GrantedPage> _all = [];

    public PersistentGrantPool(SimulatedDomain guest, uint backendId)
    {
        _guest = guest;
        _backendId = backendId;
    }

    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _all.Count;
            }
        }
    }

    public GrantedPage Rent()
    {
        lock (_lock)
        {
            if (_free.TryPop(out GrantedPage page))
            {
                return page;
            }
        }

        GuestPage fresh = _guest.AllocatePage();
        var granted = new GrantedPage(fresh, _guest.GrantAccess(_backendId, fresh, readOnly: false));
        lock (_lock)
        {
            _all.Add(granted);
        }

        return granted;
    }

    public void Return(GrantedPage page)
    {
        lock (_lock)
        {
            _free.Push(page);
        }
    }

    /// <summary>Ends every grant; returns how many the backend still had mapped (those pages are leaked).</summary>
    public int EndAll()
    {
        lock (_lock)
        {
            int stillMapped = 0;
            foreach (GrantedPage page in _all)
            {
                if (_guest.EndAccess(page.GrantRef))
                {
                    _guest.FreePage(page.Page);
                }
                else
                {
                    stillMapped++;
                }
            }

            _all.Clear();
            _free.Clear();
            return stillMapped;
        }
    }
}
