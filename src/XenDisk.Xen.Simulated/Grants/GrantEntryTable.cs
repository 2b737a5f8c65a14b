using System.Runtime.InteropServices;
using XenDisk.Abi;
using XenDisk.Xen.Simulated.Memory;
using Tmds.Linux;

namespace XenDisk.Xen.Simulated.Grants;

/// <summary>
/// The grant table a domain publishes (grant_table.h, grant_entry_v1): which of its frames which
/// other domain may map or copy, and how many mappings each entry currently has. Xen refuses to
/// end a grant that is mapped (gnttab_end_foreign_access_ref fails), so <see cref="End"/> does too.
/// One lock per granting domain guards the entries and the memfd used to map them.
/// </summary>
internal sealed unsafe class GrantEntryTable
{
    /// <summary>GNTTAB_NR_RESERVED_ENTRIES: refs 0-7 are reserved for the toolstack (console, xenstore).</summary>
    public const int ReservedEntries = 8;

    /// <summary>32 grant frames of 512 v1 entries: Xen's classic default max_grant_frames.</summary>
    public const int MaxEntries = 32 * (XenPage.Size / 8);

    private readonly Lock _lock = new();
    private readonly Entry[] _entries = new Entry[MaxEntries];
    private readonly int[] _freeRefs = new int[MaxEntries];
    private readonly GuestMemory _memory;
    private int _freeCount;
    private int _nextUnused = ReservedEntries;
    private int _activeCount;
    private bool _revoked;

    public GrantEntryTable(GuestMemory memory)
    {
        _memory = memory;
    }

    /// <summary>Entries currently granted.</summary>
    public int ActiveCount => Volatile.Read(ref _activeCount);

    public uint Grant(uint granteeDomainId, uint frame, bool readOnly)
    {
        lock (_lock)
        {
            if (_revoked)
            {
                throw new XenException("gnttab_grant_foreign_access", LibC.ENODEV, "the domain is destroyed");
            }

            int grantRef;
            if (_freeCount > 0)
            {
                grantRef = _freeRefs[--_freeCount];
            }
            else if (_nextUnused < MaxEntries)
            {
                grantRef = _nextUnused++;
            }
            else
            {
                throw new XenException("gnttab_grant_foreign_access", LibC.ENOSPC, "the grant table is full");
            }

            ref Entry entry = ref _entries[grantRef];
            entry.InUse = true;
            entry.Grantee = granteeDomainId;
            entry.Frame = frame;
            entry.ReadOnly = readOnly;
            entry.MapCount = 0;
            _activeCount++;
            return (uint)grantRef;
        }
    }

    /// <summary>gnttab_end_foreign_access_ref: false (and the grant stays) while the grantee has it mapped.</summary>
    public bool End(uint grantRef)
    {
        lock (_lock)
        {
            if (grantRef >= MaxEntries || !_entries[grantRef].InUse || _entries[grantRef].MapCount > 0)
            {
                return false;
            }

            Release(ref _entries[grantRef], grantRef);
            return true;
        }
    }

    public bool IsGranted(uint grantRef)
    {
        lock (_lock)
        {
            return grantRef < MaxEntries && _entries[grantRef].InUse;
        }
    }

    public bool IsMapped(uint grantRef)
    {
        lock (_lock)
        {
            return grantRef < MaxEntries && _entries[grantRef].InUse && _entries[grantRef].MapCount > 0;
        }
    }

    /// <summary>The domain is destroyed: every grant disappears; existing mappings stay valid memory.</summary>
    public void RevokeAll()
    {
        lock (_lock)
        {
            _revoked = true;
            for (int i = 0; i < _entries.Length; i++)
            {
                if (_entries[i].InUse)
                {
                    _entries[i].InUse = false;
                    _entries[i].Generation++;
                }
            }

            _activeCount = 0;
            _memory.CloseFile();
        }
    }

    /// <summary>
    /// Validates every ref, then maps each granted frame over the reserved range
    /// (MAP_FIXED|MAP_SHARED from the memfd) and pins the entries. All or nothing.
    /// Returns 0 or a negative errno.
    /// </summary>
    public int MapInto(uint mapperDomainId, ReadOnlySpan<uint> refs, bool writable, nint reservation, Span<uint> generations)
    {
        lock (_lock)
        {
            int fd = _memory.FileDescriptor;
            if (_revoked || fd < 0)
            {
                return -LibC.ENOENT;
            }

            for (int i = 0; i < refs.Length; i++)
            {
                int check = CheckAccess(refs[i], mapperDomainId, writable);
                if (check != GrantStatus.Okay)
                {
                    return check == GrantStatus.BadGrantRef ? -LibC.ENOENT : -LibC.EACCES;
                }
            }

            int protection = writable ? LibC.PROT_READ | LibC.PROT_WRITE : LibC.PROT_READ;
            int index = 0;
            while (index < refs.Length)
            {
                // Consecutive frames become one mmap call: a multi-page ring usually is one.
                uint firstFrame = _entries[refs[index]].Frame;
                int run = 1;
                while (index + run < refs.Length && _entries[refs[index + run]].Frame == firstFrame + (uint)run)
                {
                    run++;
                }

                nint target = reservation + (index * XenPage.Size);
                nint mapped = (nint)LibC.mmap((void*)target, (size_t)(ulong)(run * XenPage.Size), protection, LibC.MAP_SHARED | LibC.MAP_FIXED, fd, (long)firstFrame * XenPage.Size);
                if (mapped != target)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    return -(errno == 0 ? LibC.ENOMEM : errno);
                }

                index += run;
            }

            for (int i = 0; i < refs.Length; i++)
            {
                ref Entry entry = ref _entries[refs[i]];
                entry.MapCount++;
                generations[i] = entry.Generation;
            }

            return 0;
        }
    }

    /// <summary>Drops a pin taken by <see cref="MapInto"/>, unless the entry was revoked since.</summary>
    public void Unpin(uint grantRef, uint generation)
    {
        lock (_lock)
        {
            ref Entry entry = ref _entries[grantRef];
            if (entry.InUse && entry.Generation == generation && entry.MapCount > 0)
            {
                entry.MapCount--;
            }
        }
    }

    /// <summary>
    /// One side of a grant copy: copies between the granted frame and <paramref name="local"/>.
    /// Returns a GNTST_* status; the copy happens only when it is <see cref="GrantStatus.Okay"/>.
    /// </summary>
    public unsafe short Copy(uint grantRef, uint requesterDomainId, bool intoGrant, int offset, int length, byte* local)
    {
        lock (_lock)
        {
            short status = _revoked ? GrantStatus.BadDomain : CheckAccess(grantRef, requesterDomainId, intoGrant);
            if (status != GrantStatus.Okay)
            {
                return status;
            }

            byte* page = (byte*)_memory.FrameAddress(_entries[grantRef].Frame) + offset;
            if (intoGrant)
            {
                Buffer.MemoryCopy(local, page, length, length);
            }
            else
            {
                Buffer.MemoryCopy(page, local, length, length);
            }

            return GrantStatus.Okay;
        }
    }

    private short CheckAccess(uint grantRef, uint requesterDomainId, bool write)
    {
        if (grantRef >= MaxEntries || !_entries[grantRef].InUse)
        {
            return GrantStatus.BadGrantRef;
        }

        ref Entry entry = ref _entries[grantRef];
        if (entry.Grantee != requesterDomainId || (write && entry.ReadOnly))
        {
            return GrantStatus.PermissionDenied;
        }

        return GrantStatus.Okay;
    }

    private void Release(ref Entry entry, uint grantRef)
    {
        entry.InUse = false;
        entry.Generation++;
        _freeRefs[_freeCount++] = (int)grantRef;
        _activeCount--;
    }

    private struct Entry
    {
        public uint Generation;
        public uint Grantee;
        public uint Frame;
        public int MapCount;
        public bool InUse;
        public bool ReadOnly;
    }
}
