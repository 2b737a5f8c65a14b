using System.Runtime.InteropServices;
using XenDisk.Libc;
using Tmds.Linux;

namespace XenDisk.Xen.Native;

/// <summary>
/// Checks, before anything is opened, that this machine can run the native backend: the Linux Xen
/// device nodes, a way to reach xenstore, and the three libraries with every symbol the bindings
/// import. It only tests paths with access(2) and loads the libraries (which run no code of
/// consequence on load); it opens no device and never throws for a missing piece.
/// </summary>
public static class XenEnvironment
{
    /// <summary>Probes the real system paths.</summary>
    public static XenProbeResult Probe() => Probe(XenPaths.System);

    internal static XenProbeResult Probe(XenPaths paths)
    {
        var problems = new List<string>();
        CheckDevice(paths.GrantDevice, "xen-gntdev", "map or copy a guest's granted pages", problems);
        CheckDevice(paths.EventChannelDevice, "xen-evtchn", "bind event channels", problems);
        CheckDevice(paths.PrivilegedCommandDevice, "xen-privcmd", "issue hypercalls", problems);
        CheckXenStore(paths, problems);
        foreach (NativeLibraryRequirement library in Interop.Libraries.All)
        {
            CheckLibrary(library, problems);
        }

        return new XenProbeResult(problems);
    }

    private static void CheckDevice(string path, string module, string purpose, List<string> problems)
    {
        if (!Exists(path))
        {
            problems.Add($"device node {path} is missing: this is not a Xen dom0 or driver domain, or the {module} module is not loaded (needed to {purpose})");
        }
        else if (!IsReadableAndWritable(path, out int errno))
        {
            problems.Add($"device node {path} cannot be opened for reading and writing ({Errno.Name(errno)}): run xendisk as root (needed to {purpose})");
        }
    }

    private static void CheckXenStore(XenPaths paths, List<string> problems)
    {
        // The order libxenstore's xs_open tries: $XENSTORED_PATH or xenstored's unix socket, then the xenbus device.
        string? firstFound = null;
        foreach (string candidate in paths.XenStoreCandidates)
        {
            if (Exists(candidate))
            {
                firstFound ??= candidate;
                if (IsReadableAndWritable(candidate, out _))
                {
                    return;
                }
            }
        }

        string tried = string.Join(", ", paths.XenStoreCandidates);
        problems.Add(firstFound is null
            ? $"xenstore is not reachable: none of {tried} exists; start xenstored (dom0) or load the xenfs/xenbus drivers (driver domain)"
            : $"xenstore is not reachable: {firstFound} exists but cannot be opened for reading and writing; run xendisk as root");
    }

    private static void CheckLibrary(NativeLibraryRequirement library, List<string> problems)
    {
        if (!NativeLibrary.TryLoad(library.LibraryName, typeof(XenEnvironment).Assembly, null, out nint handle))
        {
            problems.Add($"library {library.LibraryName} not found: install the Debian package {library.DebianPackage}");
            return;
        }

        try
        {
            List<string> missing = [.. library.Symbols.Where(symbol => !NativeLibrary.TryGetExport(handle, symbol, out _))];
            if (missing.Count > 0)
            {
                problems.Add($"library {library.LibraryName} does not export {string.Join(", ", missing)}: it is too old; install {library.DebianPackage} from Xen 4.17 or later");
            }
        }
        finally
        {
            NativeLibrary.Free(handle);
        }
    }

    private static bool Exists(string path) => File.Exists(path) || System.IO.Directory.Exists(path);

    private static unsafe bool IsReadableAndWritable(string path, out int errno)
    {
        int result;
        fixed (byte* name = CString.Utf8(path))
        {
            result = LibC.access(name, LibC.R_OK | LibC.W_OK);
        }
        if (result == 0)
        {
            errno = 0;
            return true;
        }

        errno = NativeErrno.Last();
        return false;
    }
}

/// <summary>Where the probe looks; the system's paths in production, a scratch folder in tests.</summary>
internal sealed record XenPaths(
    string GrantDevice,
    string EventChannelDevice,
    string PrivilegedCommandDevice,
    IReadOnlyList<string> XenStoreCandidates)
{
    internal static XenPaths System => new(
        "/dev/xen/gntdev",
        "/dev/xen/evtchn",
        "/dev/xen/privcmd",
        [.. XenStoreOverride(), "/var/run/xenstored/socket", "/run/xenstored/socket", "/dev/xen/xenbus", "/proc/xen/xenbus"]);

    internal static XenPaths Under(string root) => new(
        Path.Combine(root, "dev/xen/gntdev"),
        Path.Combine(root, "dev/xen/evtchn"),
        Path.Combine(root, "dev/xen/privcmd"),
        [Path.Combine(root, "run/xenstored/socket"), Path.Combine(root, "dev/xen/xenbus")]);

    // libxenstore honours XENSTORED_PATH for the socket and the device alike.
    private static IEnumerable<string> XenStoreOverride() =>
        Environment.GetEnvironmentVariable("XENSTORED_PATH") is { Length: > 0 } path ? [path] : [];
}
