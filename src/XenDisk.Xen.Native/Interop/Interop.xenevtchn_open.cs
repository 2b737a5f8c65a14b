using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class XenEvtchn
    {
        // xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned int flags); NULL + errno on failure.
        [LibraryImport(Libraries.XenEvtchn, SetLastError = true)]
        internal static partial SafeXenEvtchnHandle xenevtchn_open(nint logger, uint flags);

        // int xenevtchn_close(xenevtchn_handle *xce); unbinds every port still bound through the handle.
        [LibraryImport(Libraries.XenEvtchn)]
        internal static partial int xenevtchn_close(nint xce);

        // int xenevtchn_fd(xenevtchn_handle *xce); readable when xenevtchn_pending has a port to return.
        [LibraryImport(Libraries.XenEvtchn)]
        internal static partial int xenevtchn_fd(SafeXenEvtchnHandle xce);
    }
}
