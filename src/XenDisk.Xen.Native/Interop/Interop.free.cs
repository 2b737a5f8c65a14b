using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class Libc
    {
        // void free(void *ptr); for the memory xs_read, xs_directory, xs_get_permissions, xs_check_watch and xs_get_domain_path return.
        [LibraryImport(Libraries.Libc)]
        internal static unsafe partial void free(void* ptr);
    }
}
