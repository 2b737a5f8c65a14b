using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class XenStore
    {
        // bool xs_rm(struct xs_handle *h, xs_transaction_t t, const char *path); false + errno on failure (ENOENT when the parent is missing too).
        [LibraryImport(Libraries.XenStore, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        [return: MarshalAs(UnmanagedType.U1)]
        internal static partial bool xs_rm(SafeXenStoreHandle h, uint t, string path);
    }
}
