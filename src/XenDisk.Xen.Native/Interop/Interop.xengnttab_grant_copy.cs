using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class XenGntTab
    {
        // int xengnttab_grant_copy(xengnttab_handle *xgt, uint32_t count, xengnttab_grant_copy_segment_t *segs); per-segment GNTST_* in segs[i].status, -1 + errno when the copy could not run.
        [LibraryImport(Libraries.XenGntTab, SetLastError = true)]
        internal static unsafe partial int xengnttab_grant_copy(nint xgt, uint count, GrantCopySegment* segs);
    }
}
