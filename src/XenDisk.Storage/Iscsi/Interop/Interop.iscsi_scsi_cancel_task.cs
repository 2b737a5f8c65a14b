using System.Runtime.InteropServices;

namespace XenDisk.Storage.Iscsi.Interop;

internal static unsafe partial class LibIscsi
{
    /// <summary>int iscsi_scsi_cancel_task(struct iscsi_context *iscsi, struct scsi_task *task); runs the callback at once with SCSI_STATUS_CANCELLED; local only.</summary>
    [LibraryImport(LibraryName, EntryPoint = "iscsi_scsi_cancel_task")]
    internal static partial int iscsi_scsi_cancel_task(nint iscsi, nint task);
}
