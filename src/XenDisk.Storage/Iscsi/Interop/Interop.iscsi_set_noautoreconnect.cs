using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>void iscsi_set_noautoreconnect(struct iscsi_context *iscsi, int state); 1: a lost session cancels its commands and defers the reconnect; 0 starts a deferred one.</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_set_noautoreconnect")]
    internal static partial void iscsi_set_noautoreconnect(nint iscsi, int state);
}
