using System.Runtime.InteropServices;

namespace XenDisk.Storage.Interop;

internal static partial class Libc
{
    // linux/falloc.h
    internal const int FALLOC_FL_KEEP_SIZE = 0x01;
    internal const int FALLOC_FL_PUNCH_HOLE = 0x02;

    /// <summary>int fallocate(int fd, int mode, off_t offset, off_t len);</summary>
    [LibraryImport(LibraryName, EntryPoint = "fallocate", SetLastError = true)]
    internal static partial int fallocate(int fd, int mode, long offset, long len);
}
