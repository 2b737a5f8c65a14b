using Microsoft.Win32.SafeHandles;

namespace XenDisk.Xen.Native;

/// <summary>
/// Owns a xengnttab_handle. Every live grant mapping holds one reference on it (DangerousAddRef in
/// <see cref="NativeGrantTable.MapGrantRefs"/>, released by a successful Unmap), so the handle is
/// closed only after its last mapping is gone, however the owner's Dispose is ordered against the
/// data plane.
/// </summary>
internal sealed class SafeXenGntTabHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    public SafeXenGntTabHandle()
        : base(ownsHandle: true)
    {
    }

    protected override bool ReleaseHandle() => Interop.XenGntTab.xengnttab_close(handle) == 0;
}
