using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class XenGntTab
    {
        // xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags); NULL + errno on failure.
        [LibraryImport(Libraries.XenGntTab, SetLastError = true)]
        internal static partial SafeXenGntTabHandle xengnttab_open(nint logger, uint open_flags);

        // int xengnttab_close(xengnttab_handle *xgt); unmaps every mapping still made through the handle.
        [LibraryImport(Libraries.XenGntTab)]
        internal static partial int xengnttab_close(nint xgt);
    }
}
