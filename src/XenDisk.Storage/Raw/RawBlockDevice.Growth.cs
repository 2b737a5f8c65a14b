using System.Runtime.InteropServices;
using Tmds.Linux;
using XenDisk.Libc;
using static Tmds.Linux.LibC;
using static XenDisk.Libc.LibCExtra;

namespace XenDisk.Storage;

// Growing a regular file for an image format that allocates at its end (qcow2), with blocks
// allocated ahead of the writes (see RawDeviceOptions.PreallocationStep for why).
public sealed unsafe partial class RawBlockDevice
{
    private readonly Lock _growGate = new();

    /// <summary>The largest size the file was opened with or asked to grow to: nothing past it holds data the caller relies on.</summary>
    private long _largestSizeAsked;

    /// <summary>Whether the file was grown past <see cref="_largestSizeAsked"/> (preallocation to give back on dispose).</summary>
    private bool _grownPastAsked;

    /// <summary>
    /// Grows a regular file to at least <paramref name="minimumBytes"/>, allocating the new blocks
    /// (fallocate) and, with <see cref="RawDeviceOptions.PreallocationStep"/>, up to a step beyond.
    /// When the step does not fit, only what was asked for is allocated. A file system without
    /// fallocate gets a sparse extension (ftruncate). A block device cannot grow: NoSpace past its end.
    /// </summary>
    public IoStatus EnsureSize(long minimumBytes)
    {
        BlockDeviceInfo info = Info;
        if (info.ReadOnly)
        {
            return IoStatus.ReadOnly;
        }
        lock (_growGate)
        {
            info = Info;
            if (minimumBytes <= info.SizeBytes)
            {
                _largestSizeAsked = Math.Max(_largestSizeAsked, minimumBytes);
                return IoStatus.Ok;
            }
            if (IsBlockDevice)
            {
                return IoStatus.NoSpace;
            }
            if (!TryAcquireDescriptor(out int fd))
            {
                return IoStatus.IoError;
            }
            try
            {
                long step = _options.PreallocationStep;
                long target = step > 0 && minimumBytes <= long.MaxValue - step ? minimumBytes + step : minimumBytes;
                int errno = Allocate(fd, info.SizeBytes, target);
                if ((errno == ENOSPC || errno == EDQUOT) && target > minimumBytes)
                {
                    // The step does not fit; what was asked for may.
                    target = minimumBytes;
                    errno = Allocate(fd, info.SizeBytes, target);
                }
                if (errno != 0)
                {
                    return IoStatuses.FromErrno(errno);
                }
                Volatile.Write(ref _info, info with { SizeBytes = target });
                _largestSizeAsked = minimumBytes;
                _grownPastAsked |= target > minimumBytes;
                return IoStatus.Ok;
            }
            finally
            {
                _handle.DangerousRelease();
            }
        }
    }

    /// <summary>Allocates [from, to) and sets the file's size to <paramref name="to"/>; 0 or an errno.</summary>
    private static int Allocate(int fd, long from, long to)
    {
        if (fallocate(fd, 0, from, to - from) == 0)
        {
            return 0;
        }
        int errno = Marshal.GetLastPInvokeError();
        if (errno != EOPNOTSUPP)
        {
            return errno;
        }
        // No block allocation here (some network and FUSE file systems): a sparse extension still works.
        return ftruncate(fd, to) == 0 ? 0 : Marshal.GetLastPInvokeError();
    }

    /// <summary>Cuts the file back to the largest size asked for, returning preallocated blocks nothing uses.</summary>
    private void GiveBackPreallocation()
    {
        lock (_growGate)
        {
            if (!_grownPastAsked || !TryAcquireDescriptor(out int fd))
            {
                return;
            }
            try
            {
                if (ftruncate(fd, _largestSizeAsked) == 0)
                {
                    _grownPastAsked = false;
                    Volatile.Write(ref _info, Info with { SizeBytes = _largestSizeAsked });
                }
            }
            finally
            {
                _handle.DangerousRelease();
            }
        }
    }
}
