using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class XenStore
    {
        // XS_PERM_* (xenstore_lib.h); the bits above WRITE are for xenstored's internal use.
        internal const uint XS_PERM_NONE = 0x00;
        internal const uint XS_PERM_READ = 0x01;
        internal const uint XS_PERM_WRITE = 0x02;

        /// <summary>struct xs_permissions (xenstore_lib.h): { unsigned int id; unsigned int perms; }.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct XsPermissions
        {
            internal uint id;
            internal uint perms;
        }

        // struct xs_permissions *xs_get_permissions(struct xs_handle *h, xs_transaction_t t, const char *path, unsigned int *num); malloc'd, free() it; NULL + errno on failure.
        [LibraryImport(Libraries.XenStore, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        internal static unsafe partial XsPermissions* xs_get_permissions(SafeXenStoreHandle h, uint t, string path, uint* num);

        // bool xs_set_permissions(struct xs_handle *h, xs_transaction_t t, const char *path, struct xs_permissions *perms, unsigned int num_perms); false + errno on failure.
        [LibraryImport(Libraries.XenStore, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        [return: MarshalAs(UnmanagedType.U1)]
        internal static unsafe partial bool xs_set_permissions(SafeXenStoreHandle h, uint t, string path, XsPermissions* perms, uint num_perms);
    }
}
