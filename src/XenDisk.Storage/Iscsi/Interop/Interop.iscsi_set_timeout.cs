using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>int iscsi_set_timeout(struct iscsi_context *iscsi, int timeout); seconds per PDU issued afterwards, enforced inside iscsi_service.</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_set_timeout")]
    internal static partial int iscsi_set_timeout(nint iscsi, int timeout);
}
