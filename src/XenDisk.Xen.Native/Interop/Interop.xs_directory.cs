using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class XenStore
    {
        // char **xs_directory(struct xs_handle *h, xs_transaction_t t, const char *path, unsigned int *num); one malloc'd block, free() it; NULL + errno on failure.
        [LibraryImport(Libraries.XenStore, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        internal static unsafe partial byte** xs_directory(SafeXenStoreHandle h, uint t, string path, uint* num);
    }
}
