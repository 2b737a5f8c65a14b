using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class XenEvtchn
    {
        // int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port); -1 + errno on failure.
        [LibraryImport(Libraries.XenEvtchn, SetLastError = true)]
        internal static partial int xenevtchn_notify(nint xce, uint port);
    }
}
