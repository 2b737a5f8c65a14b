using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>int iscsi_set_initiator_username_pwd(struct iscsi_context *iscsi, const char *user, const char *passwd); CHAP.</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_set_initiator_username_pwd", StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int iscsi_set_initiator_username_pwd(nint iscsi, string user, string passwd);
}
