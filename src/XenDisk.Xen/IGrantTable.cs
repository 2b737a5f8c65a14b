using System.Runtime.InteropServices;
using XenDisk.Abi;

namespace XenDisk.Xen;

/// <summary>
/// A grant-table handle of the backend domain (libxengnttab: xengnttab_handle).
/// Thread safety: every member may be called from any thread, concurrently.
/// Hot-path members return errno-style results rather than throwing: a failure is usually the
/// guest's doing (a bad or revoked ref) and must become a blkif error response, not an exception.
/// </summary>
public interface IGrantTable : IDisposable
{
    /// <summary>xengnttab_set_max_grants: how many pages this handle may keep mapped at once.</summary>
    void SetMaxGrants(uint count);

    /// <summary>
    /// xengnttab_map_domain_grant_refs: maps <paramref name="refs"/>, all granted by
    /// <paramref name="domainId"/>, into one contiguous range of refs.Length Xen pages.
    /// Returns 0, or a negative errno (EINVAL for a bad ref count, EFAULT/ENOENT for a ref that is
    /// unknown, revoked or read-only when <paramref name="writable"/> is set). On failure nothing
    /// stays mapped and <paramref name="address"/> is zero.
    /// Ownership: the caller owns the mapping and must <see cref="Unmap"/> it with the same page count.
    /// </summary>
    int MapGrantRefs(uint domainId, ReadOnlySpan<uint> refs, bool writable, out nint address);

    /// <summary>xengnttab_unmap: releases a mapping made by <see cref="MapGrantRefs"/>. Returns 0 or a negative errno.</summary>
    int Unmap(nint address, int pageCount);

    /// <summary>
    /// xengnttab_grant_copy: performs each segment's copy and sets its <see cref="GrantCopySegment.Status"/>
    /// (GNTST_*). A failed segment leaves the others unaffected. Returns 0 when the operation ran
    /// (look at the statuses), or a negative errno when it could not run at all.
    /// </summary>
    int Copy(Span<GrantCopySegment> segments);
}

/// <summary>
/// xengnttab_grant_copy_segment_t, laid out exactly as libxengnttab expects so that the native
/// implementation passes a span of these straight through. One side is a foreign grant (ref,
/// offset, domid) and the other a local virtual address, chosen by <see cref="Flags"/>.
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = 24)]
public struct GrantCopySegment
{
    [FieldOffset(0)] public nint SourceVirtual;
    [FieldOffset(0)] public uint SourceRef;
    [FieldOffset(4)] public ushort SourceOffset;
    [FieldOffset(6)] public ushort SourceDomain;
    [FieldOffset(8)] public nint DestinationVirtual;
    [FieldOffset(8)] public uint DestinationRef;
    [FieldOffset(12)] public ushort DestinationOffset;
    [FieldOffset(14)] public ushort DestinationDomain;
    [FieldOffset(16)] public ushort Length;
    [FieldOffset(18)] public GrantCopyFlags Flags;
    /// <summary>GNTST_* written by the copy.</summary>
    [FieldOffset(20)] public short Status;

    /// <summary>A copy from a guest's granted page into local memory (a guest WRITE).</summary>
    public static GrantCopySegment FromGuest(uint domainId, uint grantRef, ushort offset, nint destination, ushort length) => new()
    {
        SourceRef = grantRef,
        SourceOffset = offset,
        SourceDomain = (ushort)domainId,
        DestinationVirtual = destination,
        Length = length,
        Flags = GrantCopyFlags.SourceGrantRef,
    };

    /// <summary>A copy from local memory into a guest's granted page (a guest READ).</summary>
    public static GrantCopySegment ToGuest(nint source, uint domainId, uint grantRef, ushort offset, ushort length) => new()
    {
        SourceVirtual = source,
        DestinationRef = grantRef,
        DestinationOffset = offset,
        DestinationDomain = (ushort)domainId,
        Length = length,
        Flags = GrantCopyFlags.DestinationGrantRef,
    };
}
