using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class XenStore
    {
        // xs_transaction_t xs_transaction_start(struct xs_handle *h); XBT_NULL (0) + errno on failure.
        [LibraryImport(Libraries.XenStore, SetLastError = true)]
        internal static partial uint xs_transaction_start(SafeXenStoreHandle h);

        // bool xs_transaction_end(struct xs_handle *h, xs_transaction_t t, bool abort); false + errno (EAGAIN: conflict, retry) on failure.
        [LibraryImport(Libraries.XenStore, SetLastError = true)]
        [return: MarshalAs(UnmanagedType.U1)]
        internal static partial bool xs_transaction_end(SafeXenStoreHandle h, uint t, [MarshalAs(UnmanagedType.U1)] bool abort);
    }
}
