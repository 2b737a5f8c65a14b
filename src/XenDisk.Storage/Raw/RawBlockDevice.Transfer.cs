using System.Buffers;
using System.Runtime.InteropServices;
using Tmds.Linux;
using XenDisk.Libc;
using static Tmds.Linux.LibC;
using static XenDisk.Libc.LibCExtra;

namespace XenDisk.Storage;

// Reads and writes: vectored positional I/O straight from the caller's buffers, with a bounce path
// for buffers O_DIRECT cannot take.
public sealed unsafe partial class RawBlockDevice
{
    /// <summary>
    /// iovecs kept on the stack (16 bytes each, 4 KiB in all): enough for the largest blkif request
    /// (256 segments, blkback's MAX_INDIRECT_SEGMENTS), so the data plane never rents an array.
    /// </summary>
    private const int StackIovecCount = 256;

    private IoStatus Transfer(bool write, long offset, ReadOnlySpan<IoBuffer> buffers, long totalLength)
    {
        if (!TryAcquireDescriptor(out int fd))
        {
            return IoStatus.IoError;
        }
        try
        {
            if (UsesDirectIo && !IsDirectIoCompatible(buffers))
            {
                Interlocked.Increment(ref _bouncedTransfers);
                return TransferThroughBounceBuffer(fd, write, offset, buffers, totalLength);
            }
            return TransferVectored(fd, write, offset, buffers);
        }
        finally
        {
            _handle.DangerousRelease();
        }
    }

    private bool IsDirectIoCompatible(ReadOnlySpan<IoBuffer> buffers)
    {
        foreach (ref readonly IoBuffer buffer in buffers)
        {
            if ((buffer.Address & _addressAlignmentMask) != 0 || (buffer.Length & _lengthAlignmentMask) != 0)
            {
                return false;
            }
        }
        return true;
    }

    // The zero-copy path: one iovec per caller buffer, at most IOV_MAX per system call.
    private static IoStatus TransferVectored(int fd, bool write, long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        iovec[]? rented = null;
        Span<iovec> iovecs = buffers.Length <= StackIovecCount
            ? stackalloc iovec[StackIovecCount]
            : (rented = ArrayPool<iovec>.Shared.Rent(Math.Min(buffers.Length, IOV_MAX)));
        try
        {
            fixed (iovec* iov = iovecs)
            {
                int next = 0;
                while (next < buffers.Length)
                {
                    int count = Math.Min(Math.Min(buffers.Length - next, IOV_MAX), iovecs.Length);
                    long chunkLength = 0;
                    for (int i = 0; i < count; i++)
                    {
                        IoBuffer buffer = buffers[next + i];
                        iov[i].iov_base = (void*)buffer.Address;
                        iov[i].iov_len = buffer.Length;
                        chunkLength += buffer.Length;
                    }
                    IoStatus status = TransferAll(fd, write, iov, count, offset, chunkLength);
                    if (status != IoStatus.Ok)
                    {
                        return status;
                    }
                    offset += chunkLength;
                    next += count;
                }
                return IoStatus.Ok;
            }
        }
        finally
        {
            if (rented is not null)
            {
                ArrayPool<iovec>.Shared.Return(rented);
            }
        }
    }

    /// <summary>
    /// Issues preadv/pwritev until <paramref name="length"/> bytes have moved: retries on EINTR and, after
    /// a short transfer, continues from where it stopped by advancing the iovecs in place.
    /// </summary>
    private static IoStatus TransferAll(int fd, bool write, iovec* iov, int count, long offset, long length)
    {
        int first = 0;
        while (length > 0)
        {
            nint moved = write
                ? pwritev(fd, iov + first, count - first, offset)
                : preadv(fd, iov + first, count - first, offset);
            if (moved < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno == EINTR)
                {
                    continue;
                }
                return IoStatuses.FromErrno(errno);
            }
            if (moved == 0)
            {
                // End of file inside the disk: the file was truncated underneath us.
                return IoStatus.IoError;
            }
            offset += moved;
            length -= moved;
            ulong left = (ulong)moved;
            while (first < count && left >= iov[first].iov_len)
            {
                left -= iov[first].iov_len;
                first++;
            }
            if (left > 0)
            {
                iov[first].iov_base = (byte*)iov[first].iov_base + left;
                iov[first].iov_len = (size_t)((ulong)iov[first].iov_len - left);
            }
        }
        return IoStatus.Ok;
    }

    // O_DIRECT needs aligned memory and lengths; guests normally send page-aligned grants, so this path
    // is rare. The transfer goes through one aligned buffer in chunks of its size (a multiple of the
    // logical sector size, so each chunk's offset and length stay aligned for O_DIRECT).
    private IoStatus TransferThroughBounceBuffer(int fd, bool write, long offset, ReadOnlySpan<IoBuffer> buffers, long totalLength)
    {
        // Waiting for a bounce buffer is back-pressure (counted by the pool); false only when disposed.
        AlignedBufferPool? pool = BouncePool();
        if (pool is null || !pool.TryRent(out AlignedBuffer bounce, Timeout.Infinite))
        {
            return IoStatus.IoError;
        }
        try
        {
            ScatterCursor cursor = default;
            long done = 0;
            while (done < totalLength)
            {
                int chunkLength = (int)Math.Min(bounce.Length, totalLength - done);
                Span<byte> chunk = bounce.Span[..chunkLength];
                if (write)
                {
                    cursor.Gather(buffers, chunk);
                }
                iovec single = new() { iov_base = (void*)bounce.Address, iov_len = chunkLength };
                IoStatus status = TransferAll(fd, write, &single, 1, offset + done, chunkLength);
                if (status != IoStatus.Ok)
                {
                    return status;
                }
                if (!write)
                {
                    cursor.Scatter(chunk, buffers);
                }
                done += chunkLength;
            }
            return IoStatus.Ok;
        }
        finally
        {
            pool.Return(bounce);
        }
    }

    // Null once the device is disposed, so a racing transfer gets an error result rather than a new pool that nobody frees.
    private AlignedBufferPool? BouncePool()
    {
        if (_options.BouncePool is { } shared)
        {
            return shared;
        }
        lock (_bouncePoolGate)
        {
            if (_disposed)
            {
                return null;
            }
            return _ownedBouncePool ??= new AlignedBufferPool(RawDeviceOptions.DefaultBounceBufferSize, RawDeviceOptions.DefaultBounceBufferCount);
        }
    }

    /// <summary>A position in a scatter list: which buffer, and how far into it.</summary>
    private struct ScatterCursor
    {
        private int _index;
        private int _within;

        /// <summary>Copies the next <c>destination.Length</c> bytes of the scatter list into <paramref name="destination"/>.</summary>
        public void Gather(ReadOnlySpan<IoBuffer> buffers, Span<byte> destination)
        {
            while (!destination.IsEmpty)
            {
                IoBuffer buffer = buffers[_index];
                int count = Math.Min(buffer.Length - _within, destination.Length);
                new ReadOnlySpan<byte>((byte*)buffer.Address + _within, count).CopyTo(destination);
                destination = destination[count..];
                Advance(buffer.Length, count);
            }
        }

        /// <summary>Copies <paramref name="source"/> into the next <c>source.Length</c> bytes of the scatter list.</summary>
        public void Scatter(ReadOnlySpan<byte> source, ReadOnlySpan<IoBuffer> buffers)
        {
            while (!source.IsEmpty)
            {
                IoBuffer buffer = buffers[_index];
                int count = Math.Min(buffer.Length - _within, source.Length);
                source[..count].CopyTo(new Span<byte>((byte*)buffer.Address + _within, count));
                source = source[count..];
                Advance(buffer.Length, count);
            }
        }

        private void Advance(int bufferLength, int count)
        {
            _within += count;
            if (_within == bufferLength)
            {
                _index++;
                _within = 0;
            }
        }
    }
}
