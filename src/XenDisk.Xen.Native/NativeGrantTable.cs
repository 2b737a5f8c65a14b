using Tmds.Linux;

namespace XenDisk.Xen.Native;

/// <summary>
/// <see cref="IGrantTable"/> over libxengnttab (Linux: /dev/xen/gntdev).
/// Ownership: each successful <see cref="MapGrantRefs"/> takes one reference on the gnttab handle
/// and the matching successful <see cref="Unmap"/> gives it back, so <see cref="Dispose"/> while
/// mappings are live only marks the handle closed; xengnttab_close runs when the last mapping is
/// unmapped. The handle itself is never shared outside this object.
/// Hot paths (map, unmap, copy) return negative errno and never throw for a failure the guest can
/// cause; only use after <see cref="Dispose"/> (a caller bug) yields -EBADF.
/// </summary>
public sealed class NativeGrantTable : IGrantTable
{
    private readonly SafeXenGntTabHandle _handle;

    private NativeGrantTable(SafeXenGntTabHandle handle)
    {
        _handle = handle;
    }

    /// <summary>xengnttab_open. Throws <see cref="XenException"/> naming xengnttab_open when the gntdev device cannot be opened.</summary>
    public static NativeGrantTable Open()
    {
        // With a null logger libxengnttab also prints its own failures to stderr (one line each).
        SafeXenGntTabHandle handle = Interop.XenGntTab.xengnttab_open(0, 0);
        if (handle.IsInvalid)
        {
            int errno = NativeErrno.Last();
            handle.Dispose();
            throw new XenException("xengnttab_open", errno, "cannot open /dev/xen/gntdev");
        }

        return new NativeGrantTable(handle);
    }

    public void SetMaxGrants(uint count)
    {
        if (Interop.XenGntTab.xengnttab_set_max_grants(_handle, count) != 0)
        {
            NativeErrno.ThrowXenException("xengnttab_set_max_grants");
        }
    }

    public unsafe int MapGrantRefs(uint domainId, ReadOnlySpan<uint> refs, bool writable, out nint address)
    {
        address = 0;
        if (refs.IsEmpty)
        {
            return -LibC.EINVAL;
        }

        if (!SafeHandleReferences.TryAddRef(_handle))
        {
            return -LibC.EBADF;
        }

        int prot = Interop.XenGntTab.PROT_READ | (writable ? Interop.XenGntTab.PROT_WRITE : 0);
        void* mapped;
        fixed (uint* refsPointer = refs)
        {
            // libxengnttab takes a non-const uint32_t* but only reads it.
            mapped = Interop.XenGntTab.xengnttab_map_domain_grant_refs(_handle.DangerousGetHandle(), (uint)refs.Length, domainId, refsPointer, prot);
        }

        if (mapped == null)
        {
            int errno = NativeErrno.Last();
            _handle.DangerousRelease();
            return -errno;
        }

        // The reference taken above now belongs to the mapping; Unmap returns it.
        address = (nint)mapped;
        return 0;
    }

    public unsafe int Unmap(nint address, int pageCount)
    {
        if (address == 0 || pageCount <= 0)
        {
            return -LibC.EINVAL;
        }

        // No AddRef here: a live mapping already holds one, which keeps the handle open for this call.
        if (Interop.XenGntTab.xengnttab_unmap(_handle.DangerousGetHandle(), (void*)address, (uint)pageCount) != 0)
        {
            return -NativeErrno.Last();
        }

        _handle.DangerousRelease();
        return 0;
    }

    public unsafe int Copy(Span<GrantCopySegment> segments)
    {
        if (segments.IsEmpty)
        {
            return 0;
        }

        if (!SafeHandleReferences.TryAddRef(_handle))
        {
            return -LibC.EBADF;
        }

        try
        {
            fixed (GrantCopySegment* segmentsPointer = segments)
            {
                if (Interop.XenGntTab.xengnttab_grant_copy(_handle.DangerousGetHandle(), (uint)segments.Length, segmentsPointer) != 0)
                {
                    return -NativeErrno.Last();
                }
            }

            return 0;
        }
        finally
        {
            _handle.DangerousRelease();
        }
    }

    public void Dispose() => _handle.Dispose();
}
