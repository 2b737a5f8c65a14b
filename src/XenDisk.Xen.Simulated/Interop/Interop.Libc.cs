namespace XenDisk.Xen.Simulated.Interop;

/// <summary>libc calls the simulator needs to back guest memory with real shared pages.</summary>
internal static partial class Libc
{
    public const string LibraryName = "libc";

    // <sys/mman.h>, identical on x86_64 and arm64 Linux.
    public const int PROT_NONE = 0x0;
    public const int PROT_READ = 0x1;
    public const int PROT_WRITE = 0x2;
    public const int MAP_SHARED = 0x01;
    public const int MAP_PRIVATE = 0x02;
    public const int MAP_FIXED = 0x10;
    public const int MAP_ANONYMOUS = 0x20;
    public const int MAP_NORESERVE = 0x4000;
    public static readonly nint MAP_FAILED = -1;

    // <linux/memfd.h>
    public const uint MFD_CLOEXEC = 0x1;
}
