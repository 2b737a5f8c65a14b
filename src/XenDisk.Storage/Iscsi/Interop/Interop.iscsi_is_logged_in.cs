using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>int iscsi_is_logged_in(struct iscsi_context *iscsi); 0 while a reconnect is under way (the context is a fresh one until its login completes).</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_is_logged_in")]
    internal static partial int iscsi_is_logged_in(nint iscsi);
}
