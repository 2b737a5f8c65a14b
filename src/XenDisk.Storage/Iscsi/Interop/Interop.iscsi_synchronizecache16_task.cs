using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>struct scsi_task *iscsi_synchronizecache16_task(iscsi, lun, uint64_t lba, uint32_t num_blocks, int syncnv, int immed, cb, private_data); lba 0 and num_blocks 0: the whole medium (SBC-3 5.27).</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_synchronizecache16_task")]
    internal static partial nint iscsi_synchronizecache16_task(nint iscsi, int lun, ulong lba, uint num_blocks, int syncnv, int immed,
        delegate* unmanaged<nint, int, nint, nint, void> cb, nint private_data);
}
