using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>struct scsi_task *iscsi_persistent_reserve_in_task(iscsi, lun, int sa, uint16_t xferlen, cb, private_data); SPC-4 6.15.</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_persistent_reserve_in_task")]
    internal static partial nint iscsi_persistent_reserve_in_task(nint iscsi, int lun, int sa, ushort xferlen,
        delegate* unmanaged<nint, int, nint, nint, void> cb, nint private_data);
}
