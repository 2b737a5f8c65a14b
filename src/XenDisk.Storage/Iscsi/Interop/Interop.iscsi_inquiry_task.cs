using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>struct scsi_task *iscsi_inquiry_task(iscsi, lun, int evpd, int page_code, int maxsize, cb, private_data); SPC-4 6.6.</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_inquiry_task")]
    internal static partial nint iscsi_inquiry_task(nint iscsi, int lun, int evpd, int page_code, int maxsize,
        delegate* unmanaged<nint, int, nint, nint, void> cb, nint private_data);
}
