using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>int iscsi_set_targetname(struct iscsi_context *iscsi, const char *targetname);</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_set_targetname", StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int iscsi_set_targetname(nint iscsi, string targetname);
}
