using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class XenGntTab
    {
        // mmap(2) protection bits passed as xengnttab's "prot".
        internal const int PROT_READ = 0x1;
        internal const int PROT_WRITE = 0x2;

        // void *xengnttab_map_domain_grant_refs(xengnttab_handle *xgt, uint32_t count, uint32_t domid, uint32_t *refs, int prot); NULL + errno on (partial) failure.
        [LibraryImport(Libraries.XenGntTab, SetLastError = true)]
        internal static unsafe partial void* xengnttab_map_domain_grant_refs(nint xgt, uint count, uint domid, uint* refs, int prot);
    }
}
