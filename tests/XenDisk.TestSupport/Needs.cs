namespace XenDisk.TestSupport;

/// <summary>
/// The trait that marks tests needing more than the .NET runtime, as [Trait(Needs.Key, Needs.Loop)], one
/// per need, on the test class (or on the methods that need it, when only some do).
/// `dotnet test --filter "Needs!=loop"` leaves out those needing loop devices; with no filter everything
/// runs, as tools/test and CI do. Values are lower case, as they are typed in filters.
/// </summary>
public static class Needs
{
    public const string Key = "Needs";

    /// <summary>Runs as root: attaches loop devices or mounts a file system (ramfs).</summary>
    public const string Root = "root";

    /// <summary>Attaches loop devices (losetup).</summary>
    public const string Loop = "loop";

    /// <summary>Runs qemu-img, qemu-io or qemu-nbd (Debian's qemu-utils).</summary>
    public const string Qemu = "qemu";

    /// <summary>Runs fio.</summary>
    public const string Fio = "fio";

    /// <summary>Starts Debian's tgtd, a real iSCSI target.</summary>
    public const string Tgtd = "tgtd";

    /// <summary>Starts Debian's prometheus server.</summary>
    public const string Prometheus = "prometheus";
}
