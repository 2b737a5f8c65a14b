namespace XenDisk.Storage.Iscsi.Interop;

/// <summary>
/// Bindings to libiscsi (Debian's libiscsi7, the userspace initiator QEMU's iscsi driver uses), one file
/// per native function (Interop.&lt;c_name&gt;.cs), C names and exact C types kept. Only what the iSCSI
/// device uses is declared. The headers are /usr/include/iscsi/iscsi.h and scsi-lowlevel.h (libiscsi-dev).
/// </summary>
internal static partial class LibIscsi
{
    /// <summary>The versioned soname the runtime package installs (the unversioned link comes only with -dev).</summary>
    internal const string LibraryName = "libiscsi.so.7";

    /// <summary>The Debian package that installs <see cref="LibraryName"/>.</summary>
    internal const string PackageName = "libiscsi7";
}
