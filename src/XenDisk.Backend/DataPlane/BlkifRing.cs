using Microsoft.Extensions.Logging;

namespace XenDisk.Backend.DataPlane;

// CONTRACT PLACEHOLDER: the public surface the control plane codes against. The data-plane
// implementation replaces these bodies (and may add members and partial-class files).
public sealed partial class BlkifRing : IAsyncDisposable
{
    public BlkifRing(RingSetup setup, ILogger logger)
    {
        Setup = setup;
        _ = logger;
    }

    public RingSetup Setup { get; }

    /// <summary>True once the ring stopped serving because the frontend broke the ring protocol
    /// (an impossible producer index); logged once.</summary>
    public bool IsHalted => throw new NotImplementedException();

    /// <summary>The unexpected exception that stopped the ring thread, if any; never swallowed.</summary>
    public Exception? Fault => throw new NotImplementedException();

    /// <summary>Raised (on the ring thread) when the ring stops on its own: halted or faulted.</summary>
    public event Action<BlkifRing>? StoppedUnexpectedly;

    /// <summary>Starts the ring thread. It first looks at the ring once, since the frontend may have queued requests before we bound.</summary>
    public void Start() => throw new NotImplementedException();

    /// <summary>Stops taking requests, completes in-flight I/O and pushes its responses, and releases
    /// every persistent grant. The ring mapping and event channel stay the control plane's to release.</summary>
    public Task StopAsync() => throw new NotImplementedException();

    public ValueTask DisposeAsync() => new(StopAsync());

    private void RaiseStoppedUnexpectedly() => StoppedUnexpectedly?.Invoke(this);
}
