using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>struct scsi_task *iscsi_write16_iov_task(iscsi, lun, uint64_t lba, unsigned char *data, uint32_t datalen, int blocksize, wrprotect, dpo, fua, fua_nv, group_number, cb, private_data, struct scsi_iovec *iov, int niov); data NULL: the payload is read from iov, which must outlive the task.</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_write16_iov_task")]
    internal static partial nint iscsi_write16_iov_task(nint iscsi, int lun, ulong lba, byte* data, uint datalen, int blocksize,
        int wrprotect, int dpo, int fua, int fua_nv, int group_number,
        delegate* unmanaged<nint, int, nint, nint, void> cb, nint private_data, ScsiIovec* iov, int niov);
}
