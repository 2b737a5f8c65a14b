using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2.Support;

/// <summary>An image file in managed memory: grows on demand, reads past its end as zeros, counts flushes.</summary>
public sealed class GrowableMemoryDevice : IGrowableBlockDevice
{
    private readonly object _lock = new();
    private byte[] _data;
    private long _size;
    private BlockDeviceInfo _info;

    public GrowableMemoryDevice(byte[]? contents = null, bool readOnly = false)
    {
        _data = contents != null ? (byte[])contents.Clone() : new byte[64 * 1024];
        _size = contents?.LongLength ?? 0;
        _info = MakeInfo(readOnly);
    }

    public BlockDeviceInfo Info => Volatile.Read(ref _info);

    public bool CompletesInline => true;

    public int FlushCount;

    public long WrittenBytes;

    public int WriteCount;

    public byte[] ToArray()
    {
        lock (_lock)
        {
            return _data.AsSpan(0, (int)_size).ToArray();
        }
    }

    public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        lock (_lock)
        {
            if (offset < 0)
            {
                return IoStatus.OutOfRange;
            }
            long position = offset;
            foreach (IoBuffer buffer in buffers)
            {
                Span<byte> span = buffer.AsSpan();
                span.Clear();
                if (position < _size)
                {
                    int available = (int)Math.Min(span.Length, _size - position);
                    _data.AsSpan((int)position, available).CopyTo(span);
                }
                position += buffer.Length;
            }
            return IoStatus.Ok;
        }
    }

    public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        if (Info.ReadOnly)
        {
            return IoStatus.ReadOnly;
        }
        lock (_lock)
        {
            IoRange.TryGetTotalLength(buffers, out long total);
            if (offset < 0 || offset + total > _size)
            {
                return IoStatus.OutOfRange;
            }
            long position = offset;
            foreach (IoBuffer buffer in buffers)
            {
                buffer.AsSpan().CopyTo(_data.AsSpan((int)position));
                position += buffer.Length;
            }
            WrittenBytes += total;
            WriteCount++;
            return IoStatus.Ok;
        }
    }

    public IoStatus Flush()
    {
        Interlocked.Increment(ref FlushCount);
        return IoStatus.Ok;
    }

    public IoStatus Discard(long offset, long length, bool secure) => IoStatus.NotSupported;

    public BlockDeviceInfo Refresh() => Info;

    public IoStatus EnsureSize(long minimumBytes)
    {
        lock (_lock)
        {
            if (minimumBytes > int.MaxValue)
            {
                return IoStatus.NoSpace;
            }
            if (minimumBytes > _data.Length)
            {
                Array.Resize(ref _data, (int)Math.Max(minimumBytes, Math.Min(int.MaxValue, _data.LongLength * 2)));
            }
            if (minimumBytes > _size)
            {
                _size = minimumBytes;
                Volatile.Write(ref _info, MakeInfo(_info.ReadOnly));
            }
            return IoStatus.Ok;
        }
    }

    public void Dispose()
    {
    }

    private BlockDeviceInfo MakeInfo(bool readOnly) => new() { SizeBytes = _size, ReadOnly = readOnly, Description = "growable memory" };
}
