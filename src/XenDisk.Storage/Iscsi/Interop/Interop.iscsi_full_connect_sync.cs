using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>int iscsi_full_connect_sync(struct iscsi_context *iscsi, const char *portal, int lun); connects, logs in and checks the LUN.</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_full_connect_sync", StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int iscsi_full_connect_sync(nint iscsi, string portal, int lun);
}
