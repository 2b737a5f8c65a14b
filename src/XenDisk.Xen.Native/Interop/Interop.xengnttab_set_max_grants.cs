using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class XenGntTab
    {
        // int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants); -1 + errno on failure.
        [LibraryImport(Libraries.XenGntTab, SetLastError = true)]
        internal static partial int xengnttab_set_max_grants(SafeXenGntTabHandle xgt, uint nr_grants);
    }
}
