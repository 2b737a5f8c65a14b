using Microsoft.Win32.SafeHandles;

namespace XenDisk.Xen.Native;

/// <summary>Owns a struct xs_handle (one xenstore connection, with its watches and open transactions).</summary>
internal sealed class SafeXenStoreHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    public SafeXenStoreHandle()
        : base(ownsHandle: true)
    {
    }

    protected override bool ReleaseHandle()
    {
        Interop.XenStore.xs_close(handle);
        return true;
    }
}
