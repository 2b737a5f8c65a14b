using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2.Support;

/// <summary>
/// Wraps an image device and logs every write, flush and growth that reaches it, so that a crash can
/// be simulated afterwards by replaying a prefix of the log (plus any subset of the writes issued
/// since the last flush, which a real disk may or may not have kept).
/// </summary>
public sealed class RecordingOverlay(GrowableMemoryDevice inner) : IGrowableBlockDevice
{
    public abstract record Operation;
    public sealed record WriteOperation(long Offset, byte[] Data) : Operation;
    public sealed record FlushOperation : Operation;
    public sealed record GrowOperation(long Size) : Operation;

    private readonly List<Operation> _log = [];

    public int Position
    {
        get
        {
            lock (_log)
            {
                return _log.Count;
            }
        }
    }

    public IReadOnlyList<Operation> Log => _log;

    public BlockDeviceInfo Info => inner.Info;

    public bool CompletesInline => true;

    public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers) => inner.Read(offset, buffers);

    public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        IoRange.TryGetTotalLength(buffers, out long total);
        byte[] data = new byte[total];
        int position = 0;
        foreach (IoBuffer buffer in buffers)
        {
            buffer.AsSpan().CopyTo(data.AsSpan(position));
            position += buffer.Length;
        }
        IoStatus status = inner.Write(offset, buffers);
        lock (_log)
        {
            _log.Add(new WriteOperation(offset, data));
        }
        return status;
    }

    public IoStatus Flush()
    {
        lock (_log)
        {
            _log.Add(new FlushOperation());
        }
        return inner.Flush();
    }

    public IoStatus Discard(long offset, long length, bool secure) => IoStatus.NotSupported;

    public BlockDeviceInfo Refresh() => inner.Refresh();

    public IoStatus EnsureSize(long minimumBytes)
    {
        lock (_log)
        {
            _log.Add(new GrowOperation(minimumBytes));
        }
        return inner.EnsureSize(minimumBytes);
    }

    public void Dispose()
    {
    }

    /// <summary>
    /// The image as a disk would hold it after a crash at <paramref name="crashPoint"/>: everything
    /// before the last flush, and each later write with probability one half.
    /// </summary>
    public byte[] Replay(byte[] initial, int crashPoint, Random random)
    {
        int lastFlush = -1;
        for (int i = 0; i < crashPoint; i++)
        {
            if (_log[i] is FlushOperation)
            {
                lastFlush = i;
            }
        }
        byte[] image = (byte[])initial.Clone();
        for (int i = 0; i < crashPoint; i++)
        {
            switch (_log[i])
            {
                case GrowOperation grow when grow.Size > image.Length:
                    Array.Resize(ref image, (int)grow.Size);
                    break;
                case WriteOperation write when i < lastFlush || random.Next(2) == 0:
                    if (write.Offset + write.Data.Length > image.Length)
                    {
                        Array.Resize(ref image, (int)(write.Offset + write.Data.Length));
                    }
                    write.Data.CopyTo(image, write.Offset);
                    break;
            }
        }
        return image;
    }
}
