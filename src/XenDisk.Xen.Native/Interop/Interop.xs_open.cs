using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class XenStore
    {
        // struct xs_handle *xs_open(unsigned long flags); tries xenstored's socket, then /dev/xen/xenbus; NULL + errno on failure.
        [LibraryImport(Libraries.XenStore, SetLastError = true)]
        internal static partial SafeXenStoreHandle xs_open(nuint flags);

        // void xs_close(struct xs_handle *xsh); also stops libxenstore's reader thread and frees queued watch events.
        [LibraryImport(Libraries.XenStore)]
        internal static partial void xs_close(nint xsh);
    }
}
