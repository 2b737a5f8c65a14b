using System.Runtime.InteropServices;

namespace XenDisk.Xen.Simulated.Interop;

internal static partial class Libc
{
    /// <summary>int memfd_create(const char *name, unsigned int flags);</summary>
    [LibraryImport(LibraryName, EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int memfd_create(string name, uint flags);
}
