using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>int iscsi_set_header_digest(struct iscsi_context *iscsi, enum iscsi_header_digest header_digest); before login only.</summary>
    internal const int ISCSI_HEADER_DIGEST_NONE = 0;
    internal const int ISCSI_HEADER_DIGEST_NONE_CRC32C = 1;
    internal const int ISCSI_HEADER_DIGEST_CRC32C = 3;

    [LibraryImport(LibraryName, EntryPoint = "iscsi_set_header_digest")]
    internal static partial int iscsi_set_header_digest(nint iscsi, int header_digest);
}
