using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>void iscsi_set_reconnect_max_retries(struct iscsi_context *iscsi, int count); -1 retries for ever (the default).</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_set_reconnect_max_retries")]
    internal static partial void iscsi_set_reconnect_max_retries(nint iscsi, int count);
}
