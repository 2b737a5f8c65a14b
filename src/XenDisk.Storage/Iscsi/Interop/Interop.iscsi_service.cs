using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>int iscsi_service(struct iscsi_context *iscsi, int revents); runs callbacks; revents 0 only scans for timeouts.</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_service")]
    internal static partial int iscsi_service(nint iscsi, int revents);
}
