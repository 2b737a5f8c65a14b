using XenDisk.Storage;

namespace XenDisk.Backend.Tests.DataPlane.Harness;

/// <summary>
/// Wraps a memory disk so that the data plane treats it as a blocking device (I/O threads, not
/// inline), optionally holds every call at a gate, records the order in which calls completed, and
/// can be told to throw, as a broken storage implementation would.
/// </summary>
public sealed class QueuedTestDevice(IBlockDevice inner) : IBlockDevice
{
    private readonly List<string> _completed = [];
    private readonly ManualResetEventSlim _gate = new(initialState: true);
    private int _entered;

    public BlockDeviceInfo Info => inner.Info;

    public bool CompletesInline => false;

    /// <summary>Record completed calls in <see cref="Completed"/> (off for allocation measurements: recording allocates).</summary>
    public bool RecordCalls { get; init; } = true;

    /// <summary>When set, every call throws this (a contract violation the ring must not hide).</summary>
    public Exception? ThrowOnIo { get; set; }

    /// <summary>Calls that have entered the device (including those held at the gate).</summary>
    public int Entered => Volatile.Read(ref _entered);

    public IReadOnlyList<string> Completed
    {
        get
        {
            lock (_completed)
            {
                return [.. _completed];
            }
        }
    }

    public void Hold() => _gate.Reset();

    public void Release() => _gate.Set();

    public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        Enter();
        IoStatus status = inner.Read(offset, buffers);
        return RecordCalls ? Record($"read {offset}", status) : status;
    }

    public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        Enter();
        IoStatus status = inner.Write(offset, buffers);
        return RecordCalls ? Record($"write {offset}", status) : status;
    }

    public IoStatus Flush()
    {
        Enter();
        return Record("flush", inner.Flush());
    }

    public IoStatus Discard(long offset, long length, bool secure)
    {
        Enter();
        return Record($"discard {offset} {length}{(secure ? " secure" : "")}", inner.Discard(offset, length, secure));
    }

    public BlockDeviceInfo Refresh() => inner.Refresh();

    public void Dispose() => _gate.Dispose();

    private void Enter()
    {
        Interlocked.Increment(ref _entered);
        if (ThrowOnIo is { } exception)
        {
            throw exception;
        }

        _gate.Wait(RingConnection.HangGuard);
    }

    private IoStatus Record(string what, IoStatus status)
    {
        lock (_completed)
        {
            _completed.Add(what);
        }

        return status;
    }
}

/// <summary>A TimeProvider whose clock only moves when told to (persistent-grant idle expiry).</summary>
public sealed class ManualTimeProvider : TimeProvider
{
    private long _timestamp = 1_000_000;

    public override long TimestampFrequency => 1_000_000;

    public override long GetTimestamp() => Interlocked.Read(ref _timestamp);

    public void Advance(TimeSpan by) => Interlocked.Add(ref _timestamp, (long)(by.TotalSeconds * TimestampFrequency));
}
