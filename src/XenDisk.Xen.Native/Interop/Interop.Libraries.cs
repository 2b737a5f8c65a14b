namespace XenDisk.Xen.Native;

internal static partial class Interop
{
    /// <summary>
    /// The shared objects the bindings load, by their versioned soname (the name the Debian runtime
    /// packages install; the unversioned .so links come only with the -dev package), and every symbol
    /// the bindings import from each. <see cref="RequiredSymbols"/> is the one list both
    /// <see cref="XenEnvironment.Probe()"/> and the binding tests check against. libc is not bound here:
    /// it comes from Tmds.LibC (XenDisk.Libc), and memory these libraries return goes to NativeMemory.Free.
    /// </summary>
    internal static class Libraries
    {
        internal const string XenGntTab = "libxengnttab.so.1";
        internal const string XenEvtchn = "libxenevtchn.so.1";
        internal const string XenStore = "libxenstore.so.4";

        internal static readonly IReadOnlyList<NativeLibraryRequirement> All =
        [
            new(XenGntTab, "libxengnttab1",
            [
                "xengnttab_open",
                "xengnttab_close",
                "xengnttab_set_max_grants",
                "xengnttab_map_domain_grant_refs",
                "xengnttab_unmap",
                "xengnttab_grant_copy",
            ]),
            new(XenEvtchn, "libxenevtchn1",
            [
                "xenevtchn_open",
                "xenevtchn_close",
                "xenevtchn_fd",
                "xenevtchn_bind_interdomain",
                "xenevtchn_bind_unbound_port",
                "xenevtchn_unbind",
                "xenevtchn_notify",
                "xenevtchn_pending",
                "xenevtchn_unmask",
            ]),
            new(XenStore, "libxenstore4",
            [
                "xs_open",
                "xs_close",
                "xs_read",
                "xs_write",
                "xs_mkdir",
                "xs_rm",
                "xs_directory",
                "xs_get_permissions",
                "xs_set_permissions",
                "xs_transaction_start",
                "xs_transaction_end",
                "xs_watch",
                "xs_unwatch",
                "xs_fileno",
                "xs_check_watch",
                "xs_get_domain_path",
            ]),
        ];
    }
}

/// <summary>One shared object the bindings need, the Debian package that ships it, and the symbols imported from it.</summary>
internal sealed record NativeLibraryRequirement(string LibraryName, string DebianPackage, IReadOnlyList<string> Symbols);
