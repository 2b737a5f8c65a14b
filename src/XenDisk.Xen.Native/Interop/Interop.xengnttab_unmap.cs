using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class XenGntTab
    {
        // int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count); count is in pages; -1 + errno on failure.
        [LibraryImport(Libraries.XenGntTab, SetLastError = true)]
        internal static unsafe partial int xengnttab_unmap(nint xgt, void* start_address, uint count);
    }
}
