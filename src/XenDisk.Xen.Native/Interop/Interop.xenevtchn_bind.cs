using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class XenEvtchn
    {
        // xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid, evtchn_port_t remote_port); -1 + errno on failure.
        [LibraryImport(Libraries.XenEvtchn, SetLastError = true)]
        internal static partial int xenevtchn_bind_interdomain(SafeXenEvtchnHandle xce, uint domid, uint remote_port);

        // xenevtchn_port_or_error_t xenevtchn_bind_unbound_port(xenevtchn_handle *xce, uint32_t domid); -1 + errno on failure.
        [LibraryImport(Libraries.XenEvtchn, SetLastError = true)]
        internal static partial int xenevtchn_bind_unbound_port(SafeXenEvtchnHandle xce, uint domid);

        // int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port); -1 + errno on failure.
        [LibraryImport(Libraries.XenEvtchn, SetLastError = true)]
        internal static partial int xenevtchn_unbind(SafeXenEvtchnHandle xce, uint port);
    }
}
