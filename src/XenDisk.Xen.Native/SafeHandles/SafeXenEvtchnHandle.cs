using Microsoft.Win32.SafeHandles;

namespace XenDisk.Xen.Native;

/// <summary>Owns a xenevtchn_handle; closing it unbinds every port still bound through it.</summary>
internal sealed class SafeXenEvtchnHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    public SafeXenEvtchnHandle()
        : base(ownsHandle: true)
    {
    }

    protected override bool ReleaseHandle() => Interop.XenEvtchn.xenevtchn_close(handle) == 0;
}
