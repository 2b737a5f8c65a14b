using System.Runtime.InteropServices;
using Tmds.Linux;

namespace XenDisk.Libc;

/// <summary>
/// What Tmds.LibC 0.5.0 lacks, declared in its style (C names, exact C types): preadv and pwritev,
/// the block-device ioctl numbers of linux/fs.h, and the STATX_DIOALIGN fields its struct statx
/// predates (Linux 6.1). Everything else comes from <see cref="LibC"/>.
/// </summary>
public static unsafe partial class LibCExtra
{
    private const string LibraryName = "libc";

    /// <summary>Most iovecs one preadv/pwritev call accepts (UIO_MAXIOV, limits.h IOV_MAX).</summary>
    public const int IOV_MAX = 1024;

    // linux/fs.h: _IO(0x12, n) and _IOR(0x12, n, size_t) block device requests. Tmds.LibC's ioctl takes
    // the request as an int; the kernel reads it as unsigned int, so the bit pattern is what matters.
    public const int BLKSSZGET = 0x1268;                          // _IO(0x12,104): int, logical sector size
    public const int BLKDISCARD = 0x1277;                         // _IO(0x12,119): uint64_t range[2]
    public const int BLKPBSZGET = 0x127B;                         // _IO(0x12,123): unsigned int, physical sector size
    public const int BLKSECDISCARD = 0x127D;                      // _IO(0x12,125): uint64_t range[2]
    public const int BLKGETSIZE64 = unchecked((int)0x80081272);   // _IOR(0x12,114,size_t): uint64_t, size in bytes

    /// <summary>STATX_DIOALIGN (linux/stat.h, Linux 6.1): ask for stx_dio_mem_align and stx_dio_offset_align.</summary>
    public const uint STATX_DIOALIGN = 0x2000;

    /// <summary>struct statx's stx_dio_mem_align (offset 152), valid when stx_mask has <see cref="STATX_DIOALIGN"/>.</summary>
    public static uint stx_dio_mem_align(in statx buffer)
    {
        fixed (statx* p = &buffer)
        {
            return *(uint*)((byte*)p + 152);
        }
    }

    /// <summary>struct statx's stx_dio_offset_align (offset 156), valid when stx_mask has <see cref="STATX_DIOALIGN"/>.</summary>
    public static uint stx_dio_offset_align(in statx buffer)
    {
        fixed (statx* p = &buffer)
        {
            return *(uint*)((byte*)p + 156);
        }
    }

    /// <summary>ssize_t preadv(int fd, const struct iovec *iov, int iovcnt, off_t offset);</summary>
    [LibraryImport(LibraryName, EntryPoint = "preadv", SetLastError = true)]
    public static partial nint preadv(int fd, iovec* iov, int iovcnt, long offset);

    /// <summary>ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset);</summary>
    [LibraryImport(LibraryName, EntryPoint = "pwritev", SetLastError = true)]
    public static partial nint pwritev(int fd, iovec* iov, int iovcnt, long offset);
}
