using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>void scsi_free_scsi_task(struct scsi_task *task); only after its callback has run.</summary>
    [LibraryImport(LibraryName, EntryPoint = "scsi_free_scsi_task")]
    internal static partial void scsi_free_scsi_task(nint task);
}
