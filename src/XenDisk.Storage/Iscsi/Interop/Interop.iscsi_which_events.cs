using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>int iscsi_which_events(struct iscsi_context *iscsi); 0 while a reconnect waits to retry (poll again after at least 100 ms).</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_which_events")]
    internal static partial int iscsi_which_events(nint iscsi);
}
