using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Support;

/// <summary>What reached the recorded device: a write (a zeroing discard is recorded as a write of zeros), a flush, or growth of an image file.</summary>
public enum DeviceOperationKind : byte
{
    Write,
    Flush,
    Grow,
}

/// <summary>One completed operation on the recorded device. <see cref="Size"/> is the new size for <see cref="DeviceOperationKind.Grow"/>.</summary>
public readonly record struct DeviceOperation(DeviceOperationKind Kind, long Offset, byte[]? Data, long Size = 0)
{
    public long End => Kind == DeviceOperationKind.Grow ? Size : Offset + (Data?.Length ?? 0);
}

/// <summary>
/// Passes everything to an inner device and logs each completed write, flush and growth in
/// completion order, so that the storage a crash could leave behind can be rebuilt from any prefix
/// of the log (<see cref="CrashReplayer"/>). Growable when the inner device is (qcow2 files grow).
/// </summary>
public sealed class CrashRecorder(IBlockDevice inner) : IGrowableBlockDevice
{
    private readonly Lock _gate = new();
    private readonly List<DeviceOperation> _log = [];

    public BlockDeviceInfo Info => inner.Info;

    public bool CompletesInline => inner.CompletesInline;

    /// <summary>How many operations the log holds: the position of the next one.</summary>
    public int Position
    {
        get
        {
            lock (_gate)
            {
                return _log.Count;
            }
        }
    }

    public DeviceOperation[] Snapshot()
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
            IoRange.TryGetTotalLength(buffers, out long total);
            byte[] data = new byte[total];
            int position = 0;
            foreach (IoBuffer buffer in buffers)
            {
                buffer.AsSpan().CopyTo(data.AsSpan(position));
                position += buffer.Length;
            }
            Add(new DeviceOperation(DeviceOperationKind.Write, offset, data));
        }
        return status;
    }

    public IoStatus Flush()
    {
        IoStatus status = inner.Flush();
        if (status == IoStatus.Ok)
        {
            Add(new DeviceOperation(DeviceOperationKind.Flush, 0, null));
        }
        return status;
    }

    public IoStatus Discard(long offset, long length, bool secure)
    {
        IoStatus status = inner.Discard(offset, length, secure);
        if (status == IoStatus.Ok && inner.Info.DiscardZeroes)
        {
            Add(new DeviceOperation(DeviceOperationKind.Write, offset, new byte[length]));
        }
        return status;
    }

    public IoStatus EnsureSize(long minimumBytes)
    {
        if (inner is not IGrowableBlockDevice growable)
        {
            return IoStatus.NoSpace;
        }
        long before = inner.Info.SizeBytes;
        IoStatus status = growable.EnsureSize(minimumBytes);
        if (status == IoStatus.Ok && minimumBytes > before)
        {
            Add(new DeviceOperation(DeviceOperationKind.Grow, 0, null, minimumBytes));
        }
        return status;
    }

    public BlockDeviceInfo Refresh() => inner.Refresh();

    public void Dispose() => inner.Dispose();

    private void Add(DeviceOperation operation)
    {
        lock (_gate)
        {
            _log.Add(operation);
        }
    }
}

/// <summary>Which writes issued after the last completed flush a crash keeps (a volatile cache loses or keeps any of them).</summary>
public enum UnflushedWrites
{
    KeptAll,
    LostAll,
    /// <summary>Each sector of each unflushed write survives or not at random (storage promises only sector atomicity).</summary>
    KeptPerSector,
    /// <summary>Each unflushed write survives whole or not at all, at random: any subset, in any order (a page cache writing back).</summary>
    KeptPerWrite,
}

/// <summary>
/// Rebuilds the storage as a crash at a log position could leave it: everything before the last
/// flush in the prefix, then the later writes and growth per <see cref="UnflushedWrites"/>. Crash
/// positions must be asked for in ascending order: the flushed part is applied once, incrementally.
/// </summary>
public sealed class CrashReplayer
{
    private readonly DeviceOperation[] _log;
    private byte[] _durable;
    private long _durableSize;
    private int _applied;

    public CrashReplayer(byte[] initial, DeviceOperation[] log)
    {
        _log = log;
        long capacity = initial.LongLength;
        foreach (DeviceOperation operation in log)
        {
            capacity = Math.Max(capacity, operation.End);
        }
        _durable = new byte[capacity];
        initial.CopyTo(_durable, 0);
        _durableSize = initial.LongLength;
    }

    public int Length => _log.Length;

    public IReadOnlyList<DeviceOperation> Log => _log;

    /// <summary>The storage after a crash once <paramref name="prefix"/> operations completed.</summary>
    public byte[] ImageAt(int prefix, UnflushedWrites unflushed, Random random)
    {
        if (prefix < _applied || prefix > _log.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(prefix), "Crash positions must ascend and lie within the log.");
        }
        int lastFlush = -1;
        for (int i = prefix - 1; i >= _applied; i--)
        {
            if (_log[i].Kind == DeviceOperationKind.Flush)
            {
                lastFlush = i;
                break;
            }
        }
        for (; _applied <= lastFlush; _applied++)
        {
            Apply(_durable, ref _durableSize, _log[_applied], keepSector: null);
        }
        byte[] image = new byte[_durable.Length];
        _durable.AsSpan(0, (int)_durableSize).CopyTo(image);
        long size = _durableSize;
        for (int i = _applied; i < prefix; i++)
        {
            switch (unflushed)
            {
                case UnflushedWrites.KeptAll:
                    Apply(image, ref size, _log[i], keepSector: null);
                    break;
                case UnflushedWrites.KeptPerSector:
                    Apply(image, ref size, _log[i], keepSector: () => random.Next(2) == 0);
                    break;
                case UnflushedWrites.KeptPerWrite:
                    if (random.Next(2) == 0)
                    {
                        Apply(image, ref size, _log[i], keepSector: null);
                    }
                    break;
            }
        }
        return size == image.Length ? image : image.AsSpan(0, (int)size).ToArray();
    }

    private static void Apply(byte[] image, ref long size, DeviceOperation operation, Func<bool>? keepSector)
    {
        switch (operation.Kind)
        {
            case DeviceOperationKind.Grow:
                size = Math.Max(size, operation.Size);
                break;
            case DeviceOperationKind.Write:
                byte[] data = operation.Data!;
                for (int s = 0; s < data.Length; s += SectorHistory.SectorSize)
                {
                    if (keepSector is null || keepSector())
                    {
                        data.AsSpan(s, SectorHistory.SectorSize).CopyTo(image.AsSpan((int)operation.Offset + s));
                        size = Math.Max(size, operation.Offset + s + SectorHistory.SectorSize);
                    }
                }
                break;
        }
    }
}
