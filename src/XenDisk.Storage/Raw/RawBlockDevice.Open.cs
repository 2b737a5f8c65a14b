using Microsoft.Win32.SafeHandles;
using System.Globalization;
using System.Runtime.InteropServices;
using XenDisk.Storage.Interop;

namespace XenDisk.Storage;

// Opening: refuse what is not a disk, open with O_DIRECT where possible, and learn size, sector sizes
// and discard capabilities from the kernel.
public sealed unsafe partial class RawBlockDevice
{
    private readonly record struct DirectIoAlignment(int Memory, int Length);

    /// <summary>
    /// Opens a regular file or a block device. Throws <see cref="StorageException"/> (message names the
    /// path and the errno) when the path is missing, is not a regular file or block device, or cannot be
    /// opened in the requested mode.
    /// </summary>
    public static RawBlockDevice Open(string path, bool readOnly, RawDeviceOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        options ??= new RawDeviceOptions();
        int fileLogical = options.FileLogicalSectorSize;
        int filePhysical = options.FilePhysicalSectorSize == 0 ? fileLogical : options.FilePhysicalSectorSize;
        IoRange.ValidateGeometry(0, fileLogical, filePhysical);

        // Look before opening: opening a FIFO would block, and a directory or character device is not a disk.
        Statx before = StatPath(path);
        bool isBlockDevice = CheckIsDisk(path, before.stx_mode);

        (SafeFileHandle handle, bool direct, string? bufferedReason) = OpenDescriptor(path, readOnly, options.DirectIo);
        try
        {
            int fd = (int)handle.DangerousGetHandle();
            Statx opened = StatDescriptor(fd, path);
            if ((opened.stx_mode & Libc.S_IFMT) != (before.stx_mode & Libc.S_IFMT))
            {
                throw new StorageException($"Disk {path} changed type while being opened; refusing it.");
            }

            int logical = fileLogical;
            int physical = filePhysical;
            if (isBlockDevice)
            {
                (logical, physical) = ReadBlockSectorSizes(fd, path);
            }
            if (!TryReadSize(fd, isBlockDevice, logical, out long size, out int sizeErrno))
            {
                throw new StorageException($"Cannot read the size of {path}: {Errno.Describe(sizeErrno)}.", sizeErrno);
            }

            DirectIoAlignment alignment = new(logical, logical);
            if (direct && !isBlockDevice)
            {
                // statx(STATX_DIOALIGN) (Linux 6.1+) says what O_DIRECT needs on this file. If direct I/O
                // cannot serve requests at the sector size the disk presents, buffered I/O can.
                if ((opened.stx_mask & Libc.STATX_DIOALIGN) != 0)
                {
                    int offsetAlign = (int)opened.stx_dio_offset_align;
                    int memoryAlign = (int)opened.stx_dio_mem_align;
                    if (offsetAlign == 0 || offsetAlign > logical || memoryAlign > AlignedBufferPool.PageSize)
                    {
                        handle.Dispose();
                        bufferedReason = offsetAlign == 0
                            ? "buffered: the file system reports no direct I/O for this file"
                            : $"buffered: direct I/O needs {offsetAlign}-byte alignment, the disk presents {logical}-byte sectors";
                        (handle, direct, _) = OpenDescriptor(path, readOnly, directIo: false);
                        fd = (int)handle.DangerousGetHandle();
                    }
                    else
                    {
                        alignment = new DirectIoAlignment(Math.Max(memoryAlign, 1), offsetAlign);
                    }
                }
            }

            AlignedBufferPool? bouncePool = options.BouncePool;
            if (direct && bouncePool is not null && bouncePool.BufferSize % logical != 0)
            {
                throw new ArgumentException($"The bounce pool's buffer size ({bouncePool.BufferSize}) is not a multiple of {path}'s logical sector size ({logical}).", nameof(options));
            }

            BlockDeviceInfo info = isBlockDevice
                ? DescribeBlockDevice(fd, path, before, readOnly, size, logical, physical, direct)
                : DescribeFile(path, opened, readOnly, size, logical, physical, direct, bufferedReason, ProbeHolePunching(fd, readOnly, opened.stx_size));
            return new RawBlockDevice(path, handle, isBlockDevice, direct, alignment, info, options);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    private static Statx StatPath(string path)
    {
        Statx result;
        if (Libc.statx(Libc.AT_FDCWD, path, 0, Libc.STATX_TYPE | Libc.STATX_MODE, &result) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw errno switch
            {
                Errno.ENOENT => new StorageException($"Disk {path} does not exist: {Errno.Describe(errno)}.", errno),
                Errno.ENOTDIR => new StorageException($"Disk {path} does not exist (a component of the path is not a directory): {Errno.Describe(errno)}.", errno),
                Errno.EACCES => new StorageException($"Permission denied looking up disk {path}: {Errno.Describe(errno)}.", errno),
                _ => new StorageException($"Cannot examine disk {path}: {Errno.Describe(errno)}.", errno),
            };
        }
        return result;
    }

    private static Statx StatDescriptor(int fd, string path)
    {
        Statx result;
        if (Libc.statx(fd, "", Libc.AT_EMPTY_PATH, Libc.STATX_TYPE | Libc.STATX_MODE | Libc.STATX_SIZE | Libc.STATX_DIOALIGN, &result) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new StorageException($"Cannot examine disk {path} after opening it: {Errno.Describe(errno)}.", errno);
        }
        return result;
    }

    /// <summary>True for a block device, false for a regular file; anything else is refused.</summary>
    private static bool CheckIsDisk(string path, ushort mode)
    {
        switch (mode & Libc.S_IFMT)
        {
            case Libc.S_IFREG:
                return false;
            case Libc.S_IFBLK:
                return true;
            case Libc.S_IFDIR:
                throw new StorageException($"Disk {path} is a directory; a disk must be a regular file (an image) or a block device.", Errno.EISDIR);
            case Libc.S_IFCHR:
                throw new StorageException($"Disk {path} is a character device; a disk must be a regular file (an image) or a block device.", Errno.EINVAL);
            default:
                throw new StorageException($"Disk {path} is neither a regular file nor a block device (a FIFO, socket or similar); refusing it.", Errno.EINVAL);
        }
    }

    private static (SafeFileHandle Handle, bool Direct, string? BufferedReason) OpenDescriptor(string path, bool readOnly, bool directIo)
    {
        int flags = (readOnly ? Libc.O_RDONLY : Libc.O_RDWR) | Libc.O_CLOEXEC;
        string? bufferedReason = directIo ? null : "buffered: direct I/O not requested";
        int fd = OpenRetryingOnInterrupt(path, directIo ? flags | Libc.O_DIRECT : flags, out int errno);
        if (fd < 0 && directIo && errno == Errno.EINVAL)
        {
            // The file system does not do O_DIRECT (ramfs, some FUSE file systems): buffered I/O still works.
            bufferedReason = "buffered: the file system refused O_DIRECT";
            directIo = false;
            fd = OpenRetryingOnInterrupt(path, flags, out errno);
        }
        if (fd < 0)
        {
            string mode = readOnly ? "read-only" : "read-write";
            string hint = errno switch
            {
                Errno.EROFS => " The file system or device is read-only; attach the disk read-only (mode \"r\").",
                Errno.EACCES or Errno.EPERM => " Check the permissions of the file and of the backend process.",
                Errno.EBUSY => " The device is in exclusive use elsewhere (mounted, or held by another backend).",
                _ => "",
            };
            throw new StorageException($"Cannot open disk {path} {mode}: {Errno.Describe(errno)}.{hint}", errno);
        }
        return (new SafeFileHandle(fd, ownsHandle: true), directIo, bufferedReason);
    }

    private static int OpenRetryingOnInterrupt(string path, int flags, out int errno)
    {
        while (true)
        {
            int fd = Libc.open(path, flags, 0);
            errno = fd < 0 ? Marshal.GetLastPInvokeError() : 0;
            if (fd >= 0 || errno != Errno.EINTR)
            {
                return fd;
            }
        }
    }

    private static (int Logical, int Physical) ReadBlockSectorSizes(int fd, string path)
    {
        int logical;
        uint physical;
        if (Libc.ioctl(fd, Libc.BLKSSZGET, &logical) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new StorageException($"Cannot read the logical sector size of {path} (BLKSSZGET): {Errno.Describe(errno)}.", errno);
        }
        if (Libc.ioctl(fd, Libc.BLKPBSZGET, &physical) != 0)
        {
            physical = (uint)logical;
        }
        if (!IoRange.IsSectorSize(logical))
        {
            throw new StorageException($"Disk {path} reports a logical sector size of {logical} bytes; only powers of two from 512 to 65536 are supported.");
        }
        int physicalSize = (int)physical;
        if (!IoRange.IsSectorSize(physicalSize) || physicalSize < logical)
        {
            physicalSize = logical;
        }
        return (logical, physicalSize);
    }

    /// <summary>
    /// The size in bytes of what <paramref name="handle"/> is open on: BLKGETSIZE64 for a block device,
    /// fstat's st_size for anything else. For code that opens images through .NET's file APIs (the
    /// image tools' <c>FileImageDevice</c>), whose length of a block device (an LVM volume, a loop
    /// device) is fstat's 0. Throws <see cref="StorageException"/> when the size cannot be read.
    /// </summary>
    public static long SizeOf(SafeFileHandle handle, string path)
    {
        int fd = (int)handle.DangerousGetHandle();
        Statx stat = StatDescriptor(fd, path);
        bool isBlockDevice = (stat.stx_mode & Libc.S_IFMT) == Libc.S_IFBLK;
        if (!TryReadSize(fd, isBlockDevice, 1, out long size, out int errno))
        {
            throw new StorageException($"Cannot read the size of {path}: {Errno.Describe(errno)}.", errno);
        }
        return size;
    }

    /// <summary>The usable size: fstat's st_size for files, BLKGETSIZE64 for block devices, rounded down to whole sectors.</summary>
    private static bool TryReadSize(int fd, bool isBlockDevice, int logicalSectorSize, out long size, out int errno)
    {
        size = 0;
        errno = 0;
        ulong bytes;
        if (isBlockDevice)
        {
            if (Libc.ioctl(fd, Libc.BLKGETSIZE64, &bytes) != 0)
            {
                errno = Marshal.GetLastPInvokeError();
                return false;
            }
        }
        else
        {
            Statx stat;
            if (Libc.statx(fd, "", Libc.AT_EMPTY_PATH, Libc.STATX_SIZE, &stat) != 0)
            {
                errno = Marshal.GetLastPInvokeError();
                return false;
            }
            bytes = stat.stx_size;
        }
        // A trailing partial sector is not addressable by the guest (blkif counts 512-byte sectors, and
        // the disk presents whole logical sectors), so it is not part of the disk.
        size = (long)Math.Min(bytes, long.MaxValue) & ~(long)(logicalSectorSize - 1);
        return true;
    }

    /// <summary>
    /// Whether the file system can punch holes, asked without touching data: a punch past the end of the
    /// file (with FALLOC_FL_KEEP_SIZE) deallocates nothing where holes are supported and fails with
    /// EOPNOTSUPP where they are not (ramfs, some network file systems). A read-only descriptor cannot ask;
    /// a read-only disk refuses discards anyway.
    /// </summary>
    private static bool ProbeHolePunching(int fd, bool readOnly, ulong fileSize)
    {
        if (readOnly || fileSize > long.MaxValue - AlignedBufferPool.PageSize)
        {
            return false;
        }
        return Libc.fallocate(fd, Libc.FALLOC_FL_PUNCH_HOLE | Libc.FALLOC_FL_KEEP_SIZE, (long)fileSize, AlignedBufferPool.PageSize) == 0;
    }

    private static BlockDeviceInfo DescribeFile(string path, in Statx stat, bool readOnly, long size, int logical, int physical, bool direct, string? bufferedReason, bool canPunchHoles)
    {
        // Hole punching works at any sector boundary (partial blocks are zeroed), but whole file system
        // blocks are what frees space, so the block size is the granularity offered to the guest.
        int granularity = (int)stat.stx_blksize;
        if (!IoRange.IsSectorSize(granularity) || granularity < logical)
        {
            granularity = logical;
        }
        return new BlockDeviceInfo
        {
            SizeBytes = size,
            LogicalSectorSize = logical,
            PhysicalSectorSize = physical,
            ReadOnly = readOnly,
            SupportsDiscard = canPunchHoles,
            SupportsSecureDiscard = false,
            DiscardZeroes = canPunchHoles,
            DiscardGranularity = granularity,
            DiscardAlignment = 0,
            HasVolatileCache = true,
            Description = $"raw file {path} ({(direct ? "direct I/O" : bufferedReason)})",
        };
    }

    private static BlockDeviceInfo DescribeBlockDevice(int fd, string path, in Statx stat, bool readOnly, long size, int logical, int physical, bool direct)
    {
        // /sys/dev/block/MAJ:MIN is the device (or partition); a partition's queue/ lives in its parent disk.
        string sysfs = string.Create(CultureInfo.InvariantCulture, $"/sys/dev/block/{stat.stx_rdev_major}:{stat.stx_rdev_minor}");
        string queue = Directory.Exists(sysfs + "/queue") ? sysfs + "/queue" : sysfs + "/../queue";

        long discardMaxBytes = ReadSysfsNumber(queue + "/discard_max_bytes") ?? 0;
        bool supportsDiscard = discardMaxBytes > 0;
        long granularity = ReadSysfsNumber(queue + "/discard_granularity") ?? 0;
        long discardAlignment = ReadSysfsNumber(sysfs + "/discard_alignment") ?? 0;
        string? writeCache = ReadSysfsText(queue + "/write_cache");

        return new BlockDeviceInfo
        {
            SizeBytes = size,
            LogicalSectorSize = logical,
            PhysicalSectorSize = physical,
            ReadOnly = readOnly,
            SupportsDiscard = supportsDiscard,
            SupportsSecureDiscard = !readOnly && ProbeSecureDiscard(fd),
            DiscardZeroes = false,
            DiscardGranularity = granularity is > 0 and <= int.MaxValue ? (int)granularity : logical,
            DiscardAlignment = discardAlignment is > 0 and <= int.MaxValue ? (int)discardAlignment : 0,
            // "write through" means no volatile cache; absent or anything else, assume one (flushing is then merely redundant).
            HasVolatileCache = writeCache != "write through",
            Description = $"raw block device {path} ({(direct ? "direct I/O" : "buffered")})",
        };
    }

    /// <summary>
    /// Whether BLKSECDISCARD is available, without erasing anything. Since Linux 5.19 the kernel checks
    /// secure-erase support (EOPNOTSUPP) before it reads the range argument (EFAULT for a NULL pointer),
    /// so a NULL argument asks the question and touches no data. Earlier kernels read the range first
    /// and cannot be asked this way; there the answer is no.
    /// </summary>
    private static bool ProbeSecureDiscard(int fd)
    {
        if (Environment.OSVersion.Version < new Version(5, 19))
        {
            return false;
        }
        int result = Libc.ioctl(fd, Libc.BLKSECDISCARD, null);
        return result != 0 && Marshal.GetLastPInvokeError() == Errno.EFAULT;
    }

    private static long? ReadSysfsNumber(string path) =>
        long.TryParse(ReadSysfsText(path), NumberStyles.None, CultureInfo.InvariantCulture, out long value) ? value : null;

    private static string? ReadSysfsText(string path)
    {
        try
        {
            return File.ReadAllText(path).Trim();
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }
}
