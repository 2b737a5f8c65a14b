using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>struct scsi_task *iscsi_persistent_reserve_out_task(iscsi, lun, int sa, int scope, int type, void *params, cb, private_data); params is a struct scsi_persistent_reserve_out_basic, copied when the task is made.</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_persistent_reserve_out_task")]
    internal static partial nint iscsi_persistent_reserve_out_task(nint iscsi, int lun, int sa, int scope, int type, PersistentReserveOutBasic* @params,
        delegate* unmanaged<nint, int, nint, nint, void> cb, nint private_data);
}
