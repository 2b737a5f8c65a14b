using XenDisk.Xen.Simulated;

namespace XenDisk.TestFrontend;

// The data and indirect pages of requests: rented from the persistent pool when the backend
// negotiated persistent grants, otherwise allocated and granted per request and ended on completion.
internal sealed partial class FrontendRing
{
    private readonly PersistentGrantPool _pool;
    private bool _persistentData;
    private long _grantEndFailures;

    private GrantedPage AcquirePage(bool readOnlyForBackend, out bool pooled)
    {
        pooled = _persistentData;
        if (pooled)
        {
            return _pool.Rent();
        }

        GuestPage page = _guest.AllocatePage();
        return new GrantedPage(page, _guest.GrantAccess(_backendId, page, readOnlyForBackend));
    }

    private void Release(GrantedPage page, bool pooled)
    {
        if (pooled)
        {
            _pool.Return(page);
        }
        else if (_guest.EndAccess(page.GrantRef))
        {
            _guest.FreePage(page.Page);
        }
        else
        {
            // The backend still has the page mapped after answering: a leak on its side. The page
            // stays granted (and is never reused), as blkfront would have to leave it.
            Interlocked.Increment(ref _grantEndFailures);
        }
    }
}
