using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class XenEvtchn
    {
        // xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce); blocks until a port is pending; -1 + errno on failure.
        [LibraryImport(Libraries.XenEvtchn, SetLastError = true)]
        internal static partial int xenevtchn_pending(nint xce);

        // int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port); -1 + errno on failure.
        [LibraryImport(Libraries.XenEvtchn, SetLastError = true)]
        internal static partial int xenevtchn_unmask(nint xce, uint port);
    }
}
