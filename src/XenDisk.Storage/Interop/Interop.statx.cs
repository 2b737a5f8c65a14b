using System.Runtime.InteropServices;

namespace XenDisk.Storage.Interop;

/// <summary>struct statx (linux/stat.h), 256 bytes; only the fields raw storage reads are named.</summary>
[StructLayout(LayoutKind.Explicit, Size = 256)]
internal struct Statx
{
    [FieldOffset(0)] public uint stx_mask;
    [FieldOffset(4)] public uint stx_blksize;
    [FieldOffset(28)] public ushort stx_mode;
    [FieldOffset(40)] public ulong stx_size;
    [FieldOffset(128)] public uint stx_rdev_major;
    [FieldOffset(132)] public uint stx_rdev_minor;
    [FieldOffset(136)] public uint stx_dev_major;
    [FieldOffset(140)] public uint stx_dev_minor;
    [FieldOffset(152)] public uint stx_dio_mem_align;
    [FieldOffset(156)] public uint stx_dio_offset_align;
}

internal static partial class Libc
{
    internal const int AT_FDCWD = -100;
    internal const int AT_EMPTY_PATH = 0x1000;

    internal const uint STATX_TYPE = 0x1;
    internal const uint STATX_MODE = 0x2;
    internal const uint STATX_SIZE = 0x200;
    internal const uint STATX_DIOALIGN = 0x2000;

    // sys/stat.h file type bits of st_mode.
    internal const int S_IFMT = 0xF000;
    internal const int S_IFDIR = 0x4000;
    internal const int S_IFCHR = 0x2000;
    internal const int S_IFBLK = 0x6000;
    internal const int S_IFREG = 0x8000;

    /// <summary>int statx(int dirfd, const char *pathname, int flags, unsigned int mask, struct statx *statxbuf);</summary>
    [LibraryImport(LibraryName, EntryPoint = "statx", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    internal static unsafe partial int statx(int dirfd, string pathname, int flags, uint mask, Statx* statxbuf);
}
