using System.Runtime.ExceptionServices;
using Microsoft.Extensions.Logging;
using XenDisk.Abi;
using XenDisk.Storage;
using XenDisk.Xen;

namespace XenDisk.Backend.DataPlane;

/// <summary>
/// The data plane of one blkif queue: a dedicated thread that takes requests off the shared ring,
/// validates private copies of them, runs their I/O and writes the responses. The I/O runs inline
/// for devices that never block; through the thread's own io_uring for ranges the device can remap
/// to files (the fast path, no thread hand-off); otherwise on this ring's I/O threads (the slow path).
/// The ring thread alone touches the ring, the io_uring, the persistent-grant cache, the bounce
/// buffers and the request contexts; I/O threads only run storage calls and hand completed contexts back.
/// Split by concern: this file is the lifecycle, BlkifRing.Loop.cs the ring protocol,
/// BlkifRing.Requests.cs request handling, BlkifRing.Grants.cs getting at guest data and
/// BlkifRing.Engine.cs the io_uring engine and the thread's sleep.
/// </summary>
public sealed partial class BlkifRing : IAsyncDisposable
{
    private readonly ILogger _logger;
    private readonly Lock _lifecycleLock = new();
    private readonly TaskCompletionSource _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private Thread? _thread;
    private bool _started;
    private bool _threadExited;
    private volatile bool _stopRequested;
    private volatile bool _halted;
    private volatile Exception? _fault;

    public BlkifRing(RingSetup setup, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(setup);
        ArgumentNullException.ThrowIfNull(logger);
        Setup = setup;
        _logger = logger;
        Statistics = new RingStatistics();
    }

    public RingSetup Setup { get; }

    /// <summary>Counters of this ring, readable from any thread.</summary>
    public RingStatistics Statistics { get; }

    /// <summary>Number of slots in the ring (ring.h __RING_SIZE for this protocol and page count).</summary>
    public int Entries => RingGeometry.EntryCountForPages(Setup.Protocol, Setup.RingPageCount);

    /// <summary>True once the ring stopped serving because the frontend broke the ring protocol
    /// (an impossible producer index); logged once.</summary>
    public bool IsHalted => _halted;

    /// <summary>Completes when the ring thread has ended, for whatever reason (without asking it to stop).</summary>
    internal Task Exited => _stopped.Task;

    /// <summary>The unexpected exception that stopped the ring thread, if any; never swallowed.</summary>
    public Exception? Fault => _fault;

    /// <summary>Raised (on the ring thread) when the ring stops on its own: halted or faulted.</summary>
    public event Action<BlkifRing>? StoppedUnexpectedly;

    /// <summary>Starts the ring thread. It first looks at the ring once, since the frontend may have queued requests before we bound.</summary>
    public void Start()
    {
        lock (_lifecycleLock)
        {
            if (_started || _stopRequested)
            {
                throw new InvalidOperationException($"Ring {Setup.Name} was already started or stopped.");
            }

            ValidateSetup(Setup);
            Initialize();
            _thread = new Thread(Run) { IsBackground = true, Name = "blkif " + Setup.Name };
            _started = true;
            _thread.Start();
        }
    }

    /// <summary>Stops taking requests, completes in-flight I/O and pushes its responses, and releases
    /// every persistent grant. The ring mapping and event channel stay the control plane's to release.
    /// Idempotent; may be called from any thread, including from a <see cref="StoppedUnexpectedly"/> handler.</summary>
    public Task StopAsync()
    {
        lock (_lifecycleLock)
        {
            if (!_started)
            {
                _stopRequested = true;
                _stopped.TrySetResult();
            }
            else if (!_stopRequested && !_threadExited)
            {
                _stopRequested = true;
                _waker?.Signal();
            }
            else
            {
                _stopRequested = true;
            }
        }

        return _stopped.Task;
    }

    public ValueTask DisposeAsync() => new(StopAsync());

    private static void ValidateSetup(RingSetup setup)
    {
        if (setup.SharedRing == 0)
        {
            throw new ArgumentException("The shared ring is not mapped.", nameof(setup));
        }

        if (setup.RingPageCount is < 1 or > (1 << BlkifLimits.MaxRingPageOrder) || (setup.RingPageCount & (setup.RingPageCount - 1)) != 0)
        {
            throw new ArgumentException($"Ring page count {setup.RingPageCount} is not a power of two between 1 and {1 << BlkifLimits.MaxRingPageOrder}.", nameof(setup));
        }

        setup.Options.Validate();
    }

    private void Run()
    {
        bool unexpected = false;
        bool killed = false;
        try
        {
            DataPlaneLog.RingStarted(_logger, Setup.Name, _ring.Entries, Setup.Protocol, Setup.Options.DataPath, EngineName,
                _workers is null ? 0 : Setup.Options.IoThreadsPerRing, _persistent is not null, _maxIndirectSegments);
            RefreshNow();
            RedoRecoveredRequests();
            RunLoop();
            ShutDownCleanly();
        }
        catch (RingKilledForTest)
        {
            killed = true;
        }
        catch (Exception exception)
        {
            _fault = exception;
            unexpected = true;
            DataPlaneLog.RingFaulted(_logger, Setup.Name, exception);
            try
            {
                ReleaseAfterFault();
            }
            catch (Exception cleanupException)
            {
                DataPlaneLog.RingCleanupFailed(_logger, Setup.Name, cleanupException);
            }
        }
        finally
        {
            _inflight?.Dispose();
            if (!killed)
            {
                ReleaseEngine();
                _bounce?.Dispose();
            }

            lock (_lifecycleLock)
            {
                _threadExited = true;

                // Under the lock: StopAsync signals only while the thread has not exited.
                _waker?.Dispose();
            }

            _stopped.TrySetResult();
        }

        if (unexpected)
        {
            RaiseStoppedUnexpectedly();
        }
    }

    private void ShutDownCleanly()
    {
        PushResponses();

        // Everything is answered and published: the shared ring alone says where the next instance
        // starts. Not when a stop came before every recovered request was redone: those stay recorded.
        if (_recovery is null)
        {
            _inflight?.Delete();
        }

        _workers?.Stop();
        _persistent?.UnmapAll();
        LogUnmapFailures();
        DataPlaneLog.RingStopped(_logger, Setup.Name, TotalRequests(), Statistics.GuestErrors, Statistics.StorageErrors, Statistics.Unsupported);
    }

    /// <summary>After a fault: let I/O threads finish the call they are in, then release every mapping
    /// still held, so that a failed ring leaves no guest page mapped.</summary>
    private void ReleaseAfterFault()
    {
        DrainEngineForTeardown();
        _workers?.Stop();
        if (_contexts is not null)
        {
            foreach (RequestContext context in _contexts)
            {
                if (context.Mapping != 0)
                {
                    int rc = Setup.Grants.Unmap(context.Mapping, context.MappingPages);
                    Statistics.GrantUnmapped(rc == 0);
                    context.Mapping = 0;
                }
            }
        }

        _persistent?.UnmapAll();
        LogUnmapFailures();
    }

    private void LogUnmapFailures()
    {
        long failures = Statistics.GrantUnmapFailures;
        if (failures > 0)
        {
            DataPlaneLog.UnmapFailures(_logger, Setup.Name, failures);
        }
    }

    private long TotalRequests()
    {
        long total = 0;
        for (int i = 0; i < RingStatistics.OperationCount; i++)
        {
            total += Statistics.Requests((RingOperation)i);
        }

        return total;
    }

    private void RaiseStoppedUnexpectedly()
    {
        try
        {
            StoppedUnexpectedly?.Invoke(this);
        }
        catch (Exception exception)
        {
            // A failing handler must not take the process down from our thread; it is logged, not hidden.
            DataPlaneLog.StoppedHandlerFailed(_logger, Setup.Name, exception);
        }
    }

    /// <summary>An exception an I/O thread caught; rethrown on the ring thread so that it faults the ring.</summary>
    private void ThrowIfWorkerFailed()
    {
        Exception? failure = Volatile.Read(ref _workerFailure);
        if (failure is not null)
        {
            ExceptionDispatchInfo.Capture(failure).Throw();
        }
    }
}
