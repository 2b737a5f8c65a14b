using Microsoft.Win32.SafeHandles;
using System.Runtime.InteropServices;
using Tmds.Linux;
using XenDisk.Libc;
using static Tmds.Linux.LibC;
using static XenDisk.Libc.LibCExtra;

namespace XenDisk.Storage;

/// <summary>
/// A regular file or a block device, read and written through libc with positional vectored I/O
/// (preadv/pwritev straight from the caller's buffers: no copy unless O_DIRECT cannot take a buffer).
/// <para>
/// Opened with O_DIRECT when the file system allows it, buffered otherwise; <see cref="Info"/>'s
/// Description and <see cref="UsesDirectIo"/> say which. Under O_DIRECT a buffer whose address or
/// length is not aligned is bounced through an aligned pooled buffer rather than refused.
/// </para>
/// <para>
/// Errors: <see cref="Open"/> throws <see cref="StorageException"/> naming the path and errno; every
/// I/O member returns an <see cref="IoStatus"/> (EIO and unknown errors -> IoError, ENOSPC/EDQUOT ->
/// NoSpace, EROFS -> ReadOnly, EOPNOTSUPP -> NotSupported). Thread-safe: positional I/O has no
/// shared file offset. The file descriptor is owned by a <see cref="SafeFileHandle"/>; disposing while
/// I/O is in flight is safe (the descriptor closes when the last call returns), later calls answer IoError.
/// </para>
/// </summary>
public sealed unsafe partial class RawBlockDevice : IGrowableBlockDevice
{
    private readonly SafeFileHandle _handle;
    private readonly RawDeviceOptions _options;
    private readonly nint _addressAlignmentMask;
    private readonly int _lengthAlignmentMask;
    private readonly Lock _bouncePoolGate = new();
    private AlignedBufferPool? _ownedBouncePool;
    private bool _disposed;
    private BlockDeviceInfo _info;
    private long _bouncedTransfers;

    private RawBlockDevice(string path, SafeFileHandle handle, bool isBlockDevice, bool usesDirectIo,
        DirectIoAlignment alignment, BlockDeviceInfo info, RawDeviceOptions options)
    {
        Path = path;
        _handle = handle;
        IsBlockDevice = isBlockDevice;
        UsesDirectIo = usesDirectIo;
        _addressAlignmentMask = alignment.Memory - 1;
        _lengthAlignmentMask = alignment.Length - 1;
        _info = info;
        _options = options;
        _largestSizeAsked = info.SizeBytes;
    }

    /// <summary>The path the device was opened with.</summary>
    public string Path { get; }

    /// <summary>True for a block device, false for a regular file.</summary>
    public bool IsBlockDevice { get; }

    /// <summary>Whether I/O bypasses the page cache (O_DIRECT) or is buffered.</summary>
    public bool UsesDirectIo { get; }

    /// <summary>How many reads or writes went through a bounce buffer because O_DIRECT could not take the caller's buffers.</summary>
    public long BouncedTransfers => Interlocked.Read(ref _bouncedTransfers);

    public BlockDeviceInfo Info => Volatile.Read(ref _info);

    /// <summary>False: file and device I/O may block, so the data plane hands it to an I/O thread.</summary>
    public bool CompletesInline => false;

    public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        BlockDeviceInfo info = Info;
        IoStatus status = IoRange.Check(offset, buffers, info.SizeBytes, info.LogicalSectorSize, out long totalLength);
        if (status != IoStatus.Ok || totalLength == 0)
        {
            return status;
        }
        return Transfer(write: false, offset, buffers, totalLength);
    }

    public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        BlockDeviceInfo info = Info;
        if (info.ReadOnly)
        {
            return IoStatus.ReadOnly;
        }
        IoStatus status = IoRange.Check(offset, buffers, info.SizeBytes, info.LogicalSectorSize, out long totalLength);
        if (status != IoStatus.Ok || totalLength == 0)
        {
            return status;
        }
        return Transfer(write: true, offset, buffers, totalLength);
    }

    /// <summary>fdatasync: the data and the metadata needed to read it back (file size, allocation).</summary>
    public IoStatus Flush()
    {
        if (!TryAcquireDescriptor(out int fd))
        {
            return IoStatus.IoError;
        }
        try
        {
            while (fdatasync(fd) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno != EINTR)
                {
                    return IoStatuses.FromErrno(errno);
                }
            }
            return IoStatus.Ok;
        }
        finally
        {
            _handle.DangerousRelease();
        }
    }

    /// <summary>
    /// Files: punches a hole (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE), after which the range reads as
    /// zeros; secure discard is not supported, since the freed blocks keep their old contents on the host disk.
    /// Block devices: BLKDISCARD, or BLKSECDISCARD when <paramref name="secure"/>; what the range then reads
    /// back is up to the device.
    /// </summary>
    public IoStatus Discard(long offset, long length, bool secure)
    {
        BlockDeviceInfo info = Info;
        if (info.ReadOnly)
        {
            return IoStatus.ReadOnly;
        }
        if (!IoRange.IsValid(offset, length, info.SizeBytes, info.LogicalSectorSize))
        {
            return IoStatus.OutOfRange;
        }
        if (secure ? !info.SupportsSecureDiscard : !info.SupportsDiscard)
        {
            return IoStatus.NotSupported;
        }
        if (length == 0)
        {
            return IoStatus.Ok;
        }
        if (!TryAcquireDescriptor(out int fd))
        {
            return IoStatus.IoError;
        }
        try
        {
            int result;
            if (IsBlockDevice)
            {
                ulong* range = stackalloc ulong[2] { (ulong)offset, (ulong)length };
                result = ioctl(fd, secure ? BLKSECDISCARD : BLKDISCARD, range);
            }
            else
            {
                result = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
            }
            return result == 0 ? IoStatus.Ok : IoStatuses.FromErrno(Marshal.GetLastPInvokeError());
        }
        finally
        {
            _handle.DangerousRelease();
        }
    }

    /// <summary>Re-reads the size (fstat for files, BLKGETSIZE64 for block devices). On failure the previous info stands.</summary>
    public BlockDeviceInfo Refresh()
    {
        BlockDeviceInfo current = Info;
        if (!TryAcquireDescriptor(out int fd))
        {
            return current;
        }
        try
        {
            if (TryReadSize(fd, IsBlockDevice, current.LogicalSectorSize, out long size, out _) && size != current.SizeBytes)
            {
                current = current with { SizeBytes = size };
                Volatile.Write(ref _info, current);
            }
            return current;
        }
        finally
        {
            _handle.DangerousRelease();
        }
    }

    public void Dispose()
    {
        GiveBackPreallocation();
        _handle.Dispose();
        lock (_bouncePoolGate)
        {
            _disposed = true;
            _ownedBouncePool?.Dispose();
            _ownedBouncePool = null;
        }
    }

    // Holds a reference on the handle so a concurrent Dispose cannot close (and the kernel reuse) the
    // descriptor mid-call. The caller releases with DangerousRelease when this returns true.
    private bool TryAcquireDescriptor(out int fd)
    {
        fd = -1;
        if (_handle.IsClosed)
        {
            return false;
        }
        bool added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
        }
        catch (ObjectDisposedException)
        {
            // Lost a race with Dispose; reported as a result like any other failure.
            return false;
        }
        fd = (int)_handle.DangerousGetHandle();
        return added;
    }
}
