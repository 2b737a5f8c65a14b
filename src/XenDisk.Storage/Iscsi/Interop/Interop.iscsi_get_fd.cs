using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>int iscsi_get_fd(struct iscsi_context *iscsi); changes when the session reconnects, so it is read before every poll.</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_get_fd")]
    internal static partial int iscsi_get_fd(nint iscsi);
}
