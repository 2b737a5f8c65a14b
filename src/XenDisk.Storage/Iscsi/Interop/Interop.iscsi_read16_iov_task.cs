using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>struct scsi_task *iscsi_read16_iov_task(iscsi, lun, uint64_t lba, uint32_t datalen, int blocksize, rdprotect, dpo, fua, fua_nv, group_number, cb, private_data, struct scsi_iovec *iov, int niov); data lands in iov, which must outlive the task.</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_read16_iov_task")]
    internal static partial nint iscsi_read16_iov_task(nint iscsi, int lun, ulong lba, uint datalen, int blocksize,
        int rdprotect, int dpo, int fua, int fua_nv, int group_number,
        delegate* unmanaged<nint, int, nint, nint, void> cb, nint private_data, ScsiIovec* iov, int niov);
}
