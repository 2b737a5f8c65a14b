using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>struct iscsi_context *iscsi_create_context(const char *initiator_name);</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_create_context", StringMarshalling = StringMarshalling.Utf8)]
    internal static partial nint iscsi_create_context(string initiator_name);
}
