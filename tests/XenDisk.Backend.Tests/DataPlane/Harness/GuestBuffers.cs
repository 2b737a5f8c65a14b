using XenDisk.Abi;
using XenDisk.Xen.Simulated;

namespace XenDisk.Backend.Tests.DataPlane.Harness;

/// <summary>Data pages a test frontend allocates and grants to dom0 for one or more requests; disposing ends the grants and frees the pages.</summary>
public sealed class GuestBuffers : IDisposable
{
    private readonly SimulatedDomain _guest;
    private readonly List<GuestPage> _pages = [];
    private readonly List<uint> _refs = [];

    public GuestBuffers(SimulatedDomain guest, int pages, bool readOnly)
    {
        _guest = guest;
        for (int i = 0; i < pages; i++)
        {
            GuestPage page = guest.AllocatePage();
            _pages.Add(page);
            _refs.Add(guest.GrantAccess(0, page, readOnly));
        }
    }

    public int Count => _pages.Count;

    public uint Ref(int index) => _refs[index];

    public Span<byte> Page(int index) => _pages[index].Span;

    /// <summary>Full-page segments over every page.</summary>
    public Seg[] FullSegments() => [.. _refs.Select(r => new Seg(r, 0, BlkifLimits.MaxSectorInPage))];

    /// <summary>Ends every grant and frees the pages; false if the backend still had one mapped (a leak).
    /// Pages whose grant cannot end are left allocated.</summary>
    public bool TryRelease()
    {
        bool allEnded = true;
        for (int i = 0; i < _pages.Count; i++)
        {
            if (_guest.EndAccess(_refs[i]))
            {
                _guest.FreePage(_pages[i]);
            }
            else
            {
                allEnded = false;
            }
        }

        _pages.Clear();
        _refs.Clear();
        return allEnded;
    }

    /// <summary>Best effort (it must not hide a test's real failure while unwinding); tests that check for leaks call <see cref="TryRelease"/>.</summary>
    public void Dispose() => TryRelease();
}
