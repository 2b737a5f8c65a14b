using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class XenStore
    {
        // void *xs_read(struct xs_handle *h, xs_transaction_t t, const char *path, unsigned int *len); malloc'd, free() it; NULL + errno on failure.
        [LibraryImport(Libraries.XenStore, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        internal static unsafe partial byte* xs_read(SafeXenStoreHandle h, uint t, string path, uint* len);
    }
}
