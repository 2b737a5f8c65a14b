using XenDisk.Service.Control;

namespace XenDisk.Service.Maintenance;

/// <summary>
/// One hydration of one device's overlay: its progress, written by the hydrating thread, and its
/// outcome. Read at any time by status requests. Thread-safe: the counters are single words written
/// with Volatile, the outcome changes once under a lock.
/// </summary>
internal sealed class HydrationRun
{
    private readonly Lock _gate = new();
    private readonly CancellationTokenSource _cancel = new();
    private readonly TaskCompletionSource _ended = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long _bytesDone;
    private long _bytesTotal;
    private long _bytesCopied = -1;
    private string _state = HydrationStates.Running;
    private string? _error;
    private DateTimeOffset? _endedAt;

    public HydrationRun(string backendPath, long bytesPerSecond, DateTimeOffset startedAt)
    {
        BackendPath = backendPath;
        BytesPerSecond = bytesPerSecond;
        StartedAt = startedAt;
    }

    public string BackendPath { get; }

    public long BytesPerSecond { get; }

    public DateTimeOffset StartedAt { get; }

    /// <summary>The overlay being hydrated, for log lines; set when the run is prepared.</summary>
    public string Image { get; set; } = "";

    /// <summary>Fires on a cancel request (not when the disk closes: that is the device's token).</summary>
    public CancellationToken CancelToken => _cancel.Token;

    public bool CancelRequested => _cancel.IsCancellationRequested;

    /// <summary>Completes once the run reached a final state.</summary>
    public Task Ended => _ended.Task;

    public bool IsRunning
    {
        get
        {
            lock (_gate)
            {
                return _state == HydrationStates.Running;
            }
        }
    }

    /// <summary>The disk closed (device removed, service stopping): the registration that said so.</summary>
    public CancellationTokenRegistration DiskClosing { get; set; }

    public void RequestCancel() => _cancel.Cancel();

    public void Begin(long bytesTotal) => Volatile.Write(ref _bytesTotal, bytesTotal);

    /// <summary>The engine's progress callback: (bytes examined, virtual size).</summary>
    public void Progress(long bytesDone, long bytesTotal)
    {
        Volatile.Write(ref _bytesTotal, bytesTotal);
        Volatile.Write(ref _bytesDone, bytesDone);
    }

    /// <summary>The same, with the bytes copied so far when the engine counts them as it goes (null when it does not).</summary>
    public void Progress(long bytesDone, long bytesTotal, long? bytesCopied)
    {
        Progress(bytesDone, bytesTotal);
        if (bytesCopied is { } copied)
        {
            Volatile.Write(ref _bytesCopied, copied);
        }
    }

    public void Finish(long? bytesCopied, DateTimeOffset now)
    {
        Volatile.Write(ref _bytesDone, Volatile.Read(ref _bytesTotal));
        if (bytesCopied is { } copied)
        {
            Volatile.Write(ref _bytesCopied, copied);
        }

        End(HydrationStates.Finished, null, now);
    }

    public void Fail(string error, DateTimeOffset now) => End(HydrationStates.Failed, error, now);

    /// <param name="reason">Null when cancelled on request; otherwise what stopped it.</param>
    public void Cancelled(string? reason, DateTimeOffset now) => End(HydrationStates.Cancelled, reason, now);

    public HydrationReport Report()
    {
        long copied = Volatile.Read(ref _bytesCopied);
        lock (_gate)
        {
            return new HydrationReport(
                _state,
                Volatile.Read(ref _bytesDone),
                Volatile.Read(ref _bytesTotal),
                copied < 0 ? null : copied,
                BytesPerSecond,
                StartedAt,
                _endedAt,
                _error);
        }
    }

    private void End(string state, string? error, DateTimeOffset now)
    {
        lock (_gate)
        {
            if (_state != HydrationStates.Running)
            {
                return;
            }

            _state = state;
            _error = error;
            _endedAt = now;
        }

        // _cancel is not disposed: a cancel request may still arrive, and it owns no timer or handle.
        _ended.TrySetResult();
    }
}
