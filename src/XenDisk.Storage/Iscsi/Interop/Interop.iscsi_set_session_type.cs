using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>int iscsi_set_session_type(struct iscsi_context *iscsi, enum iscsi_session_type session_type);</summary>
    internal const int ISCSI_SESSION_NORMAL = 2;

    [LibraryImport(LibraryName, EntryPoint = "iscsi_set_session_type")]
    internal static partial int iscsi_set_session_type(nint iscsi, int session_type);
}
