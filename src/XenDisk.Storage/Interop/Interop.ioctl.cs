using System.Runtime.InteropServices;

namespace XenDisk.Storage.Interop;

internal static partial class Libc
{
    // linux/fs.h: _IO(0x12, n) and _IOR(0x12, n, size_t) block device requests.
    internal const nuint BLKSSZGET = 0x1268;       // _IO(0x12,104): int, logical sector size
    internal const nuint BLKDISCARD = 0x1277;      // _IO(0x12,119): uint64_t range[2]
    internal const nuint BLKPBSZGET = 0x127B;      // _IO(0x12,123): unsigned int, physical sector size
    internal const nuint BLKSECDISCARD = 0x127D;   // _IO(0x12,125): uint64_t range[2]
    internal const nuint BLKGETSIZE64 = 0x80081272; // _IOR(0x12,114,size_t): uint64_t, size in bytes

    /// <summary>int ioctl(int fd, unsigned long request, void *argp); the third argument as a pointer.</summary>
    [LibraryImport(LibraryName, EntryPoint = "ioctl", SetLastError = true)]
    internal static unsafe partial int ioctl(int fd, nuint request, void* argp);
}
