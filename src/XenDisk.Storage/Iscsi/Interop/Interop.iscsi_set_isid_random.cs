using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>
    /// int iscsi_set_isid_random(struct iscsi_context *iscsi, uint32_t rnd, uint32_t qualifier); before login.
    /// libiscsi's default ISID comes from rand() unseeded, the same in every process: two processes of one
    /// host would log in as the same I_T nexus and each login would end the other's session (RFC 7143 6.3.5).
    /// </summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_set_isid_random")]
    internal static partial int iscsi_set_isid_random(nint iscsi, uint rnd, uint qualifier);
}
