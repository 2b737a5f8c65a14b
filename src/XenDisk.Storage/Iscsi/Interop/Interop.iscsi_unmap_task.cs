using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>struct scsi_task *iscsi_unmap_task(iscsi, lun, int anchor, int group, struct unmap_list *list, int list_len, cb, private_data); the list is copied into the parameter data when the task is made.</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_unmap_task")]
    internal static partial nint iscsi_unmap_task(nint iscsi, int lun, int anchor, int group, UnmapList* list, int list_len,
        delegate* unmanaged<nint, int, nint, nint, void> cb, nint private_data);
}
