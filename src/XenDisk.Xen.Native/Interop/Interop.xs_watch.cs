using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class XenStore
    {
        // Indexes into the array xs_check_watch returns (XS_WATCH_PATH, XS_WATCH_TOKEN in xs_wire.h).
        internal const int XS_WATCH_PATH = 0;
        internal const int XS_WATCH_TOKEN = 1;

        // bool xs_watch(struct xs_handle *h, const char *path, const char *token); false + errno on failure.
        [LibraryImport(Libraries.XenStore, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        [return: MarshalAs(UnmanagedType.U1)]
        internal static partial bool xs_watch(SafeXenStoreHandle h, string path, string token);

        // bool xs_unwatch(struct xs_handle *h, const char *path, const char *token); false + errno on failure.
        [LibraryImport(Libraries.XenStore, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        [return: MarshalAs(UnmanagedType.U1)]
        internal static partial bool xs_unwatch(SafeXenStoreHandle h, string path, string token);

        // int xs_fileno(struct xs_handle *h); a pipe that is readable while watch events are queued; -1 on failure.
        [LibraryImport(Libraries.XenStore, SetLastError = true)]
        internal static partial int xs_fileno(nint h);

        // char **xs_check_watch(struct xs_handle *h); non-blocking: {path, token} in one malloc'd block, or NULL + errno (EAGAIN: none queued).
        [LibraryImport(Libraries.XenStore, SetLastError = true)]
        internal static unsafe partial byte** xs_check_watch(nint h);
    }
}
