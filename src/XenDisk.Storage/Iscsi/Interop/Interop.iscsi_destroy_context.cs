using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>int iscsi_destroy_context(struct iscsi_context *iscsi); logs out, closes the socket and frees every task still queued.</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_destroy_context")]
    internal static partial int iscsi_destroy_context(nint iscsi);
}
