using XenDisk.Xen;

namespace XenDisk.Backend.DataPlane;

/// <summary>
/// Persistent grants of one ring (blkif.h "feature-persistent"): a frontend that negotiated them
/// reuses a fixed set of granted pages, so each is mapped once, writable, one page per mapping, and
/// kept. Bounded by capacity; idle entries form an LRU list from which eviction and idle expiry take
/// the oldest. An entry in use by an in-flight request is never unmapped. When every entry is in use
/// the caller falls back to mapping the page for that request only (Linux blkback does the same once
/// it reaches xen_blkif_max_pgrants).
/// Ownership: the cache owns its mappings and unmaps them all in <see cref="UnmapAll"/>.
/// Ring thread only; no allocation after construction (the dictionary is sized up front).
/// </summary>
internal sealed class PersistentGrantCache
{
    /// <summary><see cref="Acquire"/>: every entry is in use (fall back to a per-request mapping).</summary>
    public const int Full = -1;

    /// <summary><see cref="Acquire"/>: the grant could not be mapped (a bad or revoked ref).</summary>
    public const int MapFailed = -2;

    private const int None = -1;

    private readonly IGrantTable _grants;
    private readonly uint _domainId;
    private readonly RingStatistics _statistics;
    private readonly Entry[] _entries;
    private readonly Dictionary<uint, int> _byRef;
    private readonly int[] _free;
    private readonly uint[] _oneRef = new uint[1];
    private int _freeCount;

    // Idle entries, most recently released at the head.
    private int _idleHead = None;
    private int _idleTail = None;

    public PersistentGrantCache(IGrantTable grants, uint domainId, int capacity, RingStatistics statistics)
    {
        _grants = grants;
        _domainId = domainId;
        _statistics = statistics;
        _entries = new Entry[capacity];
        _byRef = new Dictionary<uint, int>(capacity);
        _free = new int[capacity];
        for (int i = 0; i < capacity; i++)
        {
            _free[i] = capacity - 1 - i;
        }

        _freeCount = capacity;
    }

    public int Capacity => _entries.Length;

    public int Count => _byRef.Count;

    public nint AddressOf(int entry) => _entries[entry].Address;

    /// <summary>Returns the entry for <paramref name="grantRef"/>, mapping it on a miss, or <see cref="Full"/> or <see cref="MapFailed"/>.
    /// A returned entry stays mapped until the matching <see cref="Release"/>.</summary>
    public int Acquire(uint grantRef)
    {
        if (_byRef.TryGetValue(grantRef, out int index))
        {
            ref Entry hit = ref _entries[index];
            if (hit.Users == 0)
            {
                UnlinkIdle(index);
            }

            hit.Users++;
            _statistics.PersistentHit();
            return index;
        }

        _statistics.PersistentMiss();
        if (_freeCount == 0)
        {
            if (_idleTail == None)
            {
                return Full;
            }

            Unmap(_idleTail);
            _statistics.PersistentEvicted();
        }

        _oneRef[0] = grantRef;
        if (_grants.MapGrantRefs(_domainId, _oneRef, writable: true, out nint address) != 0)
        {
            return MapFailed;
        }

        _statistics.GrantMapped();
        index = _free[--_freeCount];
        _entries[index] = new Entry { GrantRef = grantRef, Address = address, Users = 1, Previous = None, Next = None };
        _byRef.Add(grantRef, index);
        _statistics.SetPersistentMapped(_byRef.Count);
        return index;
    }

    public void Release(int entry, long timestamp)
    {
        ref Entry e = ref _entries[entry];
        if (--e.Users == 0)
        {
            e.LastUsed = timestamp;
            LinkIdleAtHead(entry);
        }
    }

    /// <summary>Unmaps idle entries last used at or before <paramref name="cutoff"/> (a timestamp).</summary>
    public void ExpireIdle(long cutoff)
    {
        while (_idleTail != None && _entries[_idleTail].LastUsed <= cutoff)
        {
            Unmap(_idleTail);
            _statistics.PersistentExpired();
        }
    }

    /// <summary>The last-use timestamp of the oldest idle entry, or null when no entry is idle.</summary>
    public long? OldestIdleTimestamp => _idleTail == None ? null : _entries[_idleTail].LastUsed;

    /// <summary>Unmaps every entry, in use or not: only called once no request is in flight.</summary>
    public void UnmapAll()
    {
        for (int i = 0; i < _entries.Length; i++)
        {
            if (_entries[i].Address != 0)
            {
                _entries[i].Users = 0;
                Unmap(i);
            }
        }

        _idleHead = None;
        _idleTail = None;
    }

    private void Unmap(int index)
    {
        ref Entry e = ref _entries[index];
        if (e.Users == 0)
        {
            UnlinkIdle(index);
        }

        int rc = _grants.Unmap(e.Address, 1);
        _statistics.GrantUnmapped(rc == 0);
        _byRef.Remove(e.GrantRef);
        e = default;
        _free[_freeCount++] = index;
        _statistics.SetPersistentMapped(_byRef.Count);
    }

    private void LinkIdleAtHead(int index)
    {
        ref Entry e = ref _entries[index];
        e.Previous = None;
        e.Next = _idleHead;
        if (_idleHead != None)
        {
            _entries[_idleHead].Previous = index;
        }

        _idleHead = index;
        if (_idleTail == None)
        {
            _idleTail = index;
        }
    }

    private void UnlinkIdle(int index)
    {
        ref Entry e = ref _entries[index];
        if (e.Previous != None)
        {
            _entries[e.Previous].Next = e.Next;
        }
        else if (_idleHead == index)
        {
            _idleHead = e.Next;
        }

        if (e.Next != None)
        {
            _entries[e.Next].Previous = e.Previous;
        }
        else if (_idleTail == index)
        {
            _idleTail = e.Previous;
        }

        e.Previous = None;
        e.Next = None;
    }

    private struct Entry
    {
        public uint GrantRef;
        public nint Address;
        public int Users;
        public long LastUsed;
        public int Previous;
        public int Next;
    }
}
