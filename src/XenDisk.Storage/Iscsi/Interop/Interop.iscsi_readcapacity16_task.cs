using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>struct scsi_task *iscsi_readcapacity16_task(iscsi, lun, cb, private_data); SBC-3 5.16, 32 bytes of data-in.</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_readcapacity16_task")]
    internal static partial nint iscsi_readcapacity16_task(nint iscsi, int lun, delegate* unmanaged<nint, int, nint, nint, void> cb, nint private_data);
}
