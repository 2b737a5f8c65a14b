using XenDisk.Abi;
using XenDisk.Xen.Simulated.Grants;
using XenDisk.Xen.Simulated.Memory;
using Tmds.Linux;

namespace XenDisk.Xen.Simulated;

/// <summary>
/// A grant-table handle of a mapping domain (what xengnttab_open returns there).
/// A map reserves a contiguous PROT_NONE range and maps each granted frame over it from the
/// granter's memfd (MAP_FIXED|MAP_SHARED, read-only unless writable was asked), so the mapper and
/// the granter see the very same bytes, as with real grant mappings. A copy goes through the
/// granter's own view under the granter's grant lock.
/// Ownership: each successful <see cref="MapGrantRefs"/> is owned by the caller until
/// <see cref="Unmap"/>; mappings outlive <see cref="Dispose"/> (as vmas outlive the gntdev fd),
/// so Unmap still works after it.
/// </summary>
public sealed unsafe class SimulatedGrantTable : IGrantTable
{
    /// <summary>The limit before SetMaxGrants is called: Linux gntdev's default of 64 Ki pages per handle.</summary>
    public const uint DefaultMaxGrants = 65536;

    /// <summary>Refs in one map call: more than any ring or request can need, small enough to catch a garbage count.</summary>
    public const int MaxRefsPerMap = 4096;

    private readonly SimulatedHypervisor _hypervisor;
    private readonly SimulatedDomain _domain;
    private readonly Lock _lock = new();
    private readonly Dictionary<nint, Mapping> _mappings = [];
    private uint _maxGrants = DefaultMaxGrants;
    private long _mappedPages;
    private bool _disposed;
    private long _copyOperations;
    private int _largestCopy;

    internal SimulatedGrantTable(SimulatedHypervisor hypervisor, SimulatedDomain domain)
    {
        _hypervisor = hypervisor;
        _domain = domain;
    }

    /// <summary>Pages this handle has mapped right now.</summary>
    public int MappedPages
    {
        get
        {
            lock (_lock)
            {
                return (int)_mappedPages;
            }
        }
    }

    public void SetMaxGrants(uint count)
    {
        lock (_lock)
        {
            _maxGrants = count;
        }
    }

    public int MapGrantRefs(uint domainId, ReadOnlySpan<uint> refs, bool writable, out nint address)
    {
        address = 0;
        if (refs.Length == 0 || refs.Length > MaxRefsPerMap)
        {
            return -LibC.EINVAL;
        }

        SimulatedDomain? granter = _hypervisor.FindDomain(domainId);
        if (granter is null)
        {
            return -LibC.ENOENT;
        }

        lock (_lock)
        {
            if (_disposed)
            {
                return -LibC.EBADF;
            }

            if (_mappedPages + refs.Length > _maxGrants)
            {
                return -LibC.ENOSPC;
            }

            _mappedPages += refs.Length;
        }

        long length = (long)refs.Length * XenPage.Size;
        nint reservation = (nint)LibC.mmap(null, (size_t)(ulong)length, LibC.PROT_NONE, LibC.MAP_PRIVATE | LibC.MAP_ANONYMOUS | LibC.MAP_NORESERVE, -1, 0);
        if (reservation == (nint)LibC.MAP_FAILED)
        {
            ReleaseQuota(refs.Length);
            return -LibC.ENOMEM;
        }

        uint[] generations = new uint[refs.Length];
        int result = granter.Grants.MapInto(_domain.Id, refs, writable, reservation, generations);
        if (result != 0)
        {
            LibC.munmap((void*)reservation, (size_t)(ulong)length);
            ReleaseQuota(refs.Length);
            return result;
        }

        lock (_lock)
        {
            _mappings.Add(reservation, new Mapping(granter, refs.ToArray(), generations, Parked: false));
        }

        _hypervisor.AddActiveGrantMappings(refs.Length);
        address = reservation;
        return 0;
    }

    public int Unmap(nint address, int pageCount)
    {
        Mapping? mapping;
        lock (_lock)
        {
            if (!_mappings.TryGetValue(address, out mapping) || mapping.Refs.Length != pageCount)
            {
                return -LibC.EINVAL;
            }

            _mappings.Remove(address);
            _mappedPages -= pageCount;
        }

        long length = (long)pageCount * XenPage.Size;
        if (_hypervisor.QuarantineUnmappedPages)
        {
            _hypervisor.Quarantine.Add(address, length);
            _hypervisor.AfterQuarantinedUnmap?.Invoke();
        }
        else
        {
            LibC.munmap((void*)address, (size_t)(ulong)length);
        }

        if (!mapping.Parked)
        {
            for (int i = 0; i < mapping.Refs.Length; i++)
            {
                mapping.Granter.Grants.Unpin(mapping.Refs[i], mapping.Generations[i]);
            }

            _hypervisor.AddActiveGrantMappings(-pageCount);
        }

        return 0;
    }

    /// <summary>Grant-copy calls this handle has made (one ioctl each on real Xen, which Linux's gntdev issues as one GNTTABOP_copy per 16 segments).</summary>
    public long CopyOperations => Interlocked.Read(ref _copyOperations);

    /// <summary>The most segments one grant-copy operation of this handle carried.</summary>
    public int LargestCopy => Volatile.Read(ref _largestCopy);

    public unsafe int Copy(Span<GrantCopySegment> segments)
    {
        if (Volatile.Read(ref _disposed))
        {
            return -LibC.EBADF;
        }

        Interlocked.Increment(ref _copyOperations);
        int largest;
        while ((largest = Volatile.Read(ref _largestCopy)) < segments.Length && Interlocked.CompareExchange(ref _largestCopy, segments.Length, largest) != largest)
        {
        }

        byte* bounce = stackalloc byte[XenPage.Size];
        for (int i = 0; i < segments.Length; i++)
        {
            ref GrantCopySegment segment = ref segments[i];
            segment.Status = CopyOne(ref segment, bounce);
        }

        return 0;
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _disposed = true;
        }
    }

    /// <summary>
    /// Hypervisor teardown: mappings still held are replaced by private memory (see
    /// GuestMemory.ParkView) and stop counting; a later Unmap still releases the range.
    /// </summary>
    internal void ParkMappings()
    {
        lock (_lock)
        {
            foreach ((nint address, Mapping mapping) in _mappings.ToList())
            {
                if (!mapping.Parked)
                {
                    AddressRange.Park(address, (long)mapping.Refs.Length * XenPage.Size);
                    _mappings[address] = mapping with { Parked = true };
                    _hypervisor.AddActiveGrantMappings(-mapping.Refs.Length);
                }
            }
        }
    }

    private unsafe short CopyOne(ref GrantCopySegment segment, byte* bounce)
    {
        bool sourceIsRef = (segment.Flags & GrantCopyFlags.SourceGrantRef) != 0;
        bool destinationIsRef = (segment.Flags & GrantCopyFlags.DestinationGrantRef) != 0;
        int length = segment.Length;

        // grant_table.c gnttab_copy_one: an offset+length past the page is GNTST_bad_copy_arg.
        if ((sourceIsRef && segment.SourceOffset + length > XenPage.Size)
            || (destinationIsRef && segment.DestinationOffset + length > XenPage.Size)
            || (!sourceIsRef && !destinationIsRef))
        {
            return GrantStatus.BadCopyArgument;
        }

        SimulatedDomain? source = sourceIsRef ? _hypervisor.FindDomain(segment.SourceDomain) : null;
        SimulatedDomain? destination = destinationIsRef ? _hypervisor.FindDomain(segment.DestinationDomain) : null;
        if ((sourceIsRef && source is null) || (destinationIsRef && destination is null))
        {
            return GrantStatus.BadDomain;
        }

        if (sourceIsRef && destinationIsRef)
        {
            short status = source!.Grants.Copy(segment.SourceRef, _domain.Id, intoGrant: false, segment.SourceOffset, length, bounce);
            return status != GrantStatus.Okay
                ? status
                : destination!.Grants.Copy(segment.DestinationRef, _domain.Id, intoGrant: true, segment.DestinationOffset, length, bounce);
        }

        return sourceIsRef
            ? source!.Grants.Copy(segment.SourceRef, _domain.Id, intoGrant: false, segment.SourceOffset, length, (byte*)segment.DestinationVirtual)
            : destination!.Grants.Copy(segment.DestinationRef, _domain.Id, intoGrant: true, segment.DestinationOffset, length, (byte*)segment.SourceVirtual);
    }

    private void ReleaseQuota(int pages)
    {
        lock (_lock)
        {
            _mappedPages -= pages;
        }
    }

    private sealed record Mapping(SimulatedDomain Granter, uint[] Refs, uint[] Generations, bool Parked);
}
