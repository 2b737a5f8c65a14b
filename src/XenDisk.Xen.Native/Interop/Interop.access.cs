using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    internal static partial class Libc
    {
        internal const int R_OK = 4;
        internal const int W_OK = 2;

        // int access(const char *pathname, int mode); checks permission with the real uid without opening the file; -1 + errno on failure.
        [LibraryImport(Libraries.Libc, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int access(string pathname, int mode);
    }
}
