using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class XenStore
    {
        // bool xs_write(struct xs_handle *h, xs_transaction_t t, const char *path, const void *data, unsigned int len); false + errno on failure.
        [LibraryImport(Libraries.XenStore, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        [return: MarshalAs(UnmanagedType.U1)]
        internal static unsafe partial bool xs_write(SafeXenStoreHandle h, uint t, string path, byte* data, uint len);
    }
}
