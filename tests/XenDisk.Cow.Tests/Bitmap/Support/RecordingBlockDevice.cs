using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Bitmap.Support;

/// <summary>One write or flush that reached the recorded device, in completion order.</summary>
public sealed record RecordedIo(bool IsFlush, long Offset, byte[] Data);

/// <summary>
/// Passes everything to an inner device and logs each completed write (with a copy of its data;
/// a discard is logged as a write of zeros, which is what the memory device does) and each
/// completed flush, so that crash states can be rebuilt from any prefix of the log.
/// </summary>
public sealed class RecordingBlockDevice(IBlockDevice inner) : IBlockDevice
{
    private readonly Lock _gate = new();
    private readonly List<RecordedIo> _log = [];

    public IBlockDevice Inner => inner;

    public BlockDeviceInfo Info => inner.Info;

    public bool CompletesInline => inner.CompletesInline;

    public int Count
    {
        get
        {
            lock (_gate)
            {
                return _log.Count;
            }
        }
    }

    public RecordedIo[] Snapshot()
    {
        lock (_gate)
        {
            return [.. _log];
        }
    }

    public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers) => inner.Read(offset, buffers);

    public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        IoStatus status = inner.Write(offset, buffers);
        if (status == IoStatus.Ok)
        {
            List<byte> data = [];
            foreach (IoBuffer buffer in buffers)
            {
                data.AddRange(buffer.AsSpan().ToArray());
            }
            lock (_gate)
            {
                _log.Add(new RecordedIo(false, offset, [.. data]));
            }
        }
        return status;
    }

    public IoStatus Flush()
    {
        IoStatus status = inner.Flush();
        if (status == IoStatus.Ok)
        {
            lock (_gate)
            {
                _log.Add(new RecordedIo(true, 0, []));
            }
        }
        return status;
    }

    public IoStatus Discard(long offset, long length, bool secure)
    {
        IoStatus status = inner.Discard(offset, length, secure);
        if (status == IoStatus.Ok && Info.DiscardZeroes)
        {
            lock (_gate)
            {
                _log.Add(new RecordedIo(false, offset, new byte[length]));
            }
        }
        return status;
    }

    public BlockDeviceInfo Refresh() => inner.Refresh();

    public void Dispose() => inner.Dispose();
}

/// <summary>Counts reads per device, so tests can see how often a base was read.</summary>
public sealed class CountingBlockDevice(IBlockDevice inner) : IBlockDevice
{
    private long _reads;
    private long _writes;

    public long Reads => Interlocked.Read(ref _reads);

    public long Writes => Interlocked.Read(ref _writes);

    public BlockDeviceInfo Info => inner.Info;

    public bool CompletesInline => inner.CompletesInline;

    public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        Interlocked.Increment(ref _reads);
        return inner.Read(offset, buffers);
    }

    public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        Interlocked.Increment(ref _writes);
        return inner.Write(offset, buffers);
    }

    public IoStatus Flush() => inner.Flush();

    public IoStatus Discard(long offset, long length, bool secure) => inner.Discard(offset, length, secure);

    public BlockDeviceInfo Refresh() => inner.Refresh();

    public void Dispose() => inner.Dispose();
}
