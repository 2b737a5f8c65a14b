using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class XenStore
    {
        // char *xs_get_domain_path(struct xs_handle *h, unsigned int domid); malloc'd, free() it; NULL + errno on failure.
        [LibraryImport(Libraries.XenStore, SetLastError = true)]
        internal static unsafe partial byte* xs_get_domain_path(SafeXenStoreHandle h, uint domid);
    }
}
