using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>const char *iscsi_get_error(struct iscsi_context *iscsi); owned by the context.</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_get_error")]
    internal static partial nint iscsi_get_error(nint iscsi);
}
