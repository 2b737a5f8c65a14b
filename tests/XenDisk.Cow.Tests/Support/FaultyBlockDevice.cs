using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Support;

/// <summary>The storage operation a <see cref="Fault"/> fails.</summary>
public enum FaultTarget
{
    Write,
    Flush,
    /// <summary>Growing an image file (<see cref="IGrowableBlockDevice.EnsureSize"/>): the file system is full.</summary>
    Grow,
}

/// <summary>When, relative to the moment a fault is armed, the operations it may fail come.</summary>
public enum FaultPhase
{
    Any,
    /// <summary>Only until the first flush after arming: the data writes of a guest request (they precede its write-back).</summary>
    BeforeFirstFlush,
    /// <summary>Only after the first flush after arming: the metadata writes of a write-back pass (they follow its data flush).</summary>
    AfterFirstFlush,
}

/// <summary>
/// A storage error to inject: after <see cref="Skip"/> matching operations pass, the next
/// <see cref="Count"/> fail with <see cref="Status"/> (<see cref="IoStatus.IoError"/> stands for
/// EIO, <see cref="IoStatus.NoSpace"/> for ENOSPC, as the raw device maps errno). Writes match when
/// they overlap [<see cref="RangeStart"/>, <see cref="RangeEnd"/>) and come in <see cref="Phase"/>.
/// </summary>
public sealed record Fault(FaultTarget Target, IoStatus Status)
{
    public long RangeStart { get; init; }

    public long RangeEnd { get; init; } = long.MaxValue;

    public int Skip { get; init; }

    /// <summary>How many matching operations fail; int.MaxValue: every one until <see cref="FaultyBlockDevice.Heal"/>.</summary>
    public int Count { get; init; } = 1;

    public FaultPhase Phase { get; init; }
}

/// <summary>
/// A decorator that fails chosen writes, flushes or growth of the device under an overlay, and
/// models what storage keeps when that happens, so that a test can reopen both what a running
/// host would still show and what survives a power loss:
/// <list type="bullet">
/// <item>the volatile view is the inner device: every write that completed, plus the first half of
/// the sectors of a failed write (a real device may have written part of a request that failed);</item>
/// <item>the durable view (<see cref="DurableImage"/>) gets the writes since the last flush when a
/// flush succeeds. A failed flush loses them: Linux marks the pages of a failed writeback clean, so
/// a later fsync succeeds without ever writing them (the "fsyncgate" behaviour), which is why an
/// overlay must not report a later flush as successful.</item>
/// </list>
/// Thread-safe; reads pass straight through. Growth is durable at once (the file reads zeros there).
/// </summary>
public sealed class FaultyBlockDevice : IGrowableBlockDevice
{
    private readonly IBlockDevice _inner;
    private readonly Lock _gate = new();
    private readonly List<(long Offset, byte[] Data)> _unflushed = [];
    private readonly List<(FaultTarget Target, long Offset, long Length)> _injected = [];
    private byte[] _durable;
    private Fault? _fault;
    private int _matched;
    private int _failed;
    private bool _flushSeen;

    public FaultyBlockDevice(IBlockDevice inner)
    {
        _inner = inner;
        _durable = ReadAll(inner);
    }

    public BlockDeviceInfo Info => _inner.Info;

    public bool CompletesInline => _inner.CompletesInline;

    /// <summary>Operations failed so far (by every fault armed since construction).</summary>
    public int FailuresInjected
    {
        get
        {
            lock (_gate)
            {
                return _injected.Count;
            }
        }
    }

    /// <summary>Each failed operation: what it was, and for writes the range it covered (growth: the size asked for).</summary>
    public IReadOnlyList<(FaultTarget Target, long Offset, long Length)> Injected
    {
        get
        {
            lock (_gate)
            {
                return [.. _injected];
            }
        }
    }

    /// <summary>Arms <paramref name="fault"/> (replacing any other); matching is counted from now.</summary>
    public void Inject(Fault fault)
    {
        lock (_gate)
        {
            _fault = fault;
            _matched = 0;
            _failed = 0;
            _flushSeen = false;
        }
    }

    /// <summary>The storage is healthy again: nothing more fails.</summary>
    public void Heal()
    {
        lock (_gate)
        {
            _fault = null;
        }
    }

    /// <summary>What the storage shows now (the inner device).</summary>
    public byte[] VolatileImage() => ReadAll(_inner);

    /// <summary>What survives a power loss now: the storage as of the last successful flush.</summary>
    public byte[] DurableImage()
    {
        lock (_gate)
        {
            return (byte[])_durable.Clone();
        }
    }

    public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers) => _inner.Read(offset, buffers);

    public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        IoRange.TryGetTotalLength(buffers, out long total);
        lock (_gate)
        {
            IoStatus injected = Decide(FaultTarget.Write, offset, total);
            byte[] data = Gather(buffers, total);
            if (injected == IoStatus.Ok)
            {
                IoStatus status = _inner.WriteAt(offset, data);
                if (status == IoStatus.Ok)
                {
                    _unflushed.Add((offset, data));
                }
                return status;
            }
            int sectors = (int)(total / 512);
            if (sectors / 2 > 0)
            {
                byte[] part = data.AsSpan(0, sectors / 2 * 512).ToArray();
                if (_inner.WriteAt(offset, part) == IoStatus.Ok)
                {
                    _unflushed.Add((offset, part));
                }
            }
            _injected.Add((FaultTarget.Write, offset, total));
            return injected;
        }
    }

    public IoStatus Flush()
    {
        lock (_gate)
        {
            IoStatus injected = Decide(FaultTarget.Flush, 0, 0);
            _flushSeen = true;
            if (injected != IoStatus.Ok)
            {
                // The writes this flush was to make durable are lost to the durable view.
                _unflushed.Clear();
                _injected.Add((FaultTarget.Flush, 0, 0));
                return injected;
            }
            IoStatus status = _inner.Flush();
            if (status == IoStatus.Ok)
            {
                foreach ((long offset, byte[] data) in _unflushed)
                {
                    EnsureDurableSize(offset + data.Length);
                    data.CopyTo(_durable, offset);
                }
                _unflushed.Clear();
            }
            return status;
        }
    }

    public IoStatus Discard(long offset, long length, bool secure)
    {
        lock (_gate)
        {
            IoStatus status = _inner.Discard(offset, length, secure);
            if (status == IoStatus.Ok && _inner.Info.DiscardZeroes)
            {
                _unflushed.Add((offset, new byte[length]));
            }
            return status;
        }
    }

    public IoStatus EnsureSize(long minimumBytes)
    {
        lock (_gate)
        {
            if (_inner is not IGrowableBlockDevice growable)
            {
                return IoStatus.NoSpace;
            }
            // Only growth needs space: asking for a size the file already has never fails.
            IoStatus injected = minimumBytes <= _inner.Info.SizeBytes ? IoStatus.Ok : Decide(FaultTarget.Grow, minimumBytes, 0);
            if (injected != IoStatus.Ok)
            {
                _injected.Add((FaultTarget.Grow, minimumBytes, 0));
                return injected;
            }
            IoStatus status = growable.EnsureSize(minimumBytes);
            if (status == IoStatus.Ok)
            {
                EnsureDurableSize(minimumBytes);
            }
            return status;
        }
    }

    public BlockDeviceInfo Refresh() => _inner.Refresh();

    public void Dispose() => _inner.Dispose();

    private IoStatus Decide(FaultTarget target, long offset, long length)
    {
        Fault? fault = _fault;
        if (fault is null || fault.Target != target || _failed >= fault.Count)
        {
            return IoStatus.Ok;
        }
        bool inPhase = fault.Phase switch
        {
            FaultPhase.BeforeFirstFlush => !_flushSeen,
            FaultPhase.AfterFirstFlush => _flushSeen,
            _ => true,
        };
        bool inRange = target != FaultTarget.Write || (offset < fault.RangeEnd && offset + length > fault.RangeStart);
        if (!inPhase || !inRange || _matched++ < fault.Skip)
        {
            return IoStatus.Ok;
        }
        _failed++;
        return fault.Status;
    }

    private void EnsureDurableSize(long size)
    {
        if (size > _durable.LongLength)
        {
            Array.Resize(ref _durable, checked((int)size));
        }
    }

    private static byte[] Gather(ReadOnlySpan<IoBuffer> buffers, long total)
    {
        byte[] data = new byte[total];
        int position = 0;
        foreach (IoBuffer buffer in buffers)
        {
            buffer.AsSpan().CopyTo(data.AsSpan(position));
            position += buffer.Length;
        }
        return data;
    }

    private static byte[] ReadAll(IBlockDevice device)
    {
        byte[] contents = new byte[device.Info.SizeBytes];
        IoStatus status = device.ReadAt(0, contents);
        if (status != IoStatus.Ok)
        {
            throw new InvalidOperationException($"Reading the storage under test failed: {status}.");
        }
        return contents;
    }
}
