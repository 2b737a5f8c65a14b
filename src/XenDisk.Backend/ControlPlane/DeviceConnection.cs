using Microsoft.Extensions.Logging;
using XenDisk.Abi;
using XenDisk.Backend.DataPlane;
using XenDisk.Storage;
using XenDisk.Xen;
using XenDisk.Libc;

namespace XenDisk.Backend.ControlPlane;

/// <summary>
/// One connection of a device to its frontend: the rings of every queue (Linux blkback's
/// xen_blkif_ring array between connect_ring and xen_blkif_disconnect).
/// Ownership: this object owns the grant-table handle, every ring mapping, every event-channel
/// handle and binding, and the <see cref="BlkifRing"/>s. It borrows the disk (the device owns it).
/// <see cref="DisconnectAsync"/> releases everything in the order the data plane requires: rings
/// stopped (in-flight I/O drained) before their pages are unmapped and their channels unbound.
/// </summary>
internal sealed class DeviceConnection
{
    private readonly string _name;
    private readonly ILogger _logger;
    private readonly Queue[] _queues;
    private IGrantTable? _grants;
    private BlkifRing? _stoppedRing;

    private DeviceConnection(string name, ILogger logger, FrontendRings rings, NegotiatedFeatures features)
    {
        _name = name;
        _logger = logger;
        Rings = rings;
        Features = features;
        _queues = new Queue[rings.Queues.Count];
        for (int i = 0; i < _queues.Length; i++)
        {
            _queues[i] = new Queue(rings.Queues[i]);
        }
    }

    public FrontendRings Rings { get; }

    public NegotiatedFeatures Features { get; }

    /// <summary>The first ring that stopped on its own (halted or faulted), if any.</summary>
    public BlkifRing? StoppedRing => Volatile.Read(ref _stoppedRing);

    public IReadOnlyList<QueueStatus> QueueStatuses { get; private set; } = [];

    /// <summary>
    /// Maps every queue's ring, binds its event channel and starts its ring thread (Linux
    /// read_per_ring_refs + xen_blkif_map, then the xenblkd threads). On failure everything made so
    /// far is released and a <see cref="DeviceSetupException"/> explains which queue failed.
    /// <paramref name="onRingStopped"/> runs on a ring thread when that ring stops on its own.
    /// </summary>
    public static async Task<DeviceConnection> OpenAsync(
        string name,
        IXenPlatform platform,
        uint frontendDomainId,
        IBlockDevice disk,
        FrontendRings rings,
        NegotiatedFeatures features,
        BackendOptions options,
        ILogger logger,
        ILogger ringLogger,
        Action onRingStopped)
    {
        var connection = new DeviceConnection(name, logger, rings, features);
        try
        {
            connection.Open(platform, frontendDomainId, disk, options, ringLogger, onRingStopped);
            return connection;
        }
        catch
        {
            await connection.DisconnectAsync(options.RingDrainTimeout).ConfigureAwait(false);
            throw;
        }
    }

    private void Open(IXenPlatform platform, uint frontendDomainId, IBlockDevice disk, BackendOptions options, ILogger ringLogger, Action onRingStopped)
    {
        // One grant handle per connection: its mapping limit is sized for this connection, and
        // closing it at disconnect cannot disturb another device.
        _grants = platform.OpenGrantTable();
        _grants.SetMaxGrants(MaxGrantsFor(Rings, options));

        foreach (Queue queue in _queues)
        {
            FrontendQueue wanted = queue.Frontend;
            int result = _grants.MapGrantRefs(frontendDomainId, wanted.RingRefs, writable: true, out nint address);
            if (result != 0)
            {
                throw new DeviceSetupException(
                    $"mapping queue {wanted.Index}'s ring ({wanted.RingRefs.Length} page(s), first ref {wanted.RingRefs[0]}) failed: {Errno.Name(-result)}");
            }

            queue.RingAddress = address;

            queue.Channels = platform.OpenEventChannels();
            try
            {
                queue.LocalPort = queue.Channels.BindInterdomain(frontendDomainId, wanted.EventChannel);
                queue.Bound = true;
            }
            catch (XenException e)
            {
                throw new DeviceSetupException($"binding queue {wanted.Index}'s event channel {wanted.EventChannel} failed: {Errno.Name(e.Errno)}", e);
            }

            var setup = new RingSetup
            {
                Name = Rings.Queues.Count == 1 ? _name : $"{_name} queue {wanted.Index}",
                FrontendDomainId = frontendDomainId,
                QueueIndex = wanted.Index,
                Protocol = Rings.Protocol,
                SharedRing = address,
                RingPageCount = Rings.RingPageCount,
                Grants = _grants,
                EventChannels = queue.Channels,
                LocalPort = queue.LocalPort,
                Disk = disk,
                Features = Features,
                Options = options.DataPlane,
                InflightRecordPath = options.InflightDirectory is { } directory
                    ? Path.Combine(directory, $"{_name.Replace('/', '-')}-q{wanted.Index}")
                    : null,
                InflightIdentity = $"{frontendDomainId} {_name} q{wanted.Index} refs {string.Join(',', wanted.RingRefs)} port {wanted.EventChannel} {Rings.Protocol} pages {Rings.RingPageCount}",
            };
            queue.Ring = new BlkifRing(setup, ringLogger);
            queue.Ring.StoppedUnexpectedly += ring =>
            {
                Interlocked.CompareExchange(ref _stoppedRing, ring, null);
                onRingStopped();
            };
        }

        // Start only once every queue is mapped and bound, so that a failure above never has to
        // stop a ring that is already serving.
        foreach (Queue queue in _queues)
        {
            queue.Ring!.Start();
            queue.Started = true;
        }

        QueueStatuses = Array.ConvertAll(_queues, q => new QueueStatus(q.Frontend.Index, Rings.RingPageCount, q.Frontend.EventChannel, q.LocalPort, q.Ring!));
    }

    /// <summary>
    /// Stops every ring (each drains its in-flight I/O and releases its persistent grants), then
    /// unmaps the rings, unbinds and closes the channels and closes the grant handle (Linux
    /// xen_blkif_disconnect). Idempotent. A ring that does not drain within
    /// <paramref name="drainTimeout"/> keeps its mapping and channel: its I/O may still touch them.
    /// </summary>
    public async Task DisconnectAsync(TimeSpan drainTimeout)
    {
        // Stop all rings at once: each drains independently, so the slowest one sets the pace.
        var stops = new Task[_queues.Length];
        for (int i = 0; i < _queues.Length; i++)
        {
            stops[i] = StopRingAsync(_queues[i], drainTimeout);
        }

        await Task.WhenAll(stops).ConfigureAwait(false);

        bool anyLeft = false;
        foreach (Queue queue in _queues)
        {
            if (queue.Undrained)
            {
                anyLeft = true;
                continue;
            }

            if (queue.RingAddress != 0)
            {
                int result = _grants!.Unmap(queue.RingAddress, queue.Frontend.RingRefs.Length);
                if (result != 0)
                {
                    ControlPlaneLog.ReleaseFailed(_logger, _name, $"queue {queue.Frontend.Index}'s ring mapping ({Errno.Name(-result)})", null);
                }

                queue.RingAddress = 0;
            }

            if (queue.Channels is not null)
            {
                if (queue.Bound)
                {
                    Release(() => queue.Channels.Unbind(queue.LocalPort), $"queue {queue.Frontend.Index}'s event channel {queue.LocalPort}");
                    queue.Bound = false;
                }

                Release(queue.Channels.Dispose, $"queue {queue.Frontend.Index}'s event-channel handle");
                queue.Channels = null;
            }
        }

        if (!anyLeft && _grants is not null)
        {
            Release(_grants.Dispose, "the grant-table handle");
            _grants = null;
        }

        QueueStatuses = [];
    }

    private async Task StopRingAsync(Queue queue, TimeSpan drainTimeout)
    {
        BlkifRing? ring = queue.Ring;
        if (ring is null || !queue.Started)
        {
            queue.Ring = null;
            return;
        }

        try
        {
            await ring.StopAsync().WaitAsync(drainTimeout).ConfigureAwait(false);
            queue.Started = false;
            queue.Ring = null;
        }
        catch (TimeoutException)
        {
            queue.Undrained = true;
            ControlPlaneLog.RingDrainTimedOut(_logger, _name, queue.Frontend.Index, drainTimeout);
        }
        catch (Exception e)
        {
            // The ring thread is gone either way; what it failed on was logged by the ring.
            queue.Started = false;
            queue.Ring = null;
            ControlPlaneLog.ReleaseFailed(_logger, _name, $"queue {queue.Frontend.Index}'s ring", e);
        }
    }

    private void Release(Action release, string what)
    {
        try
        {
            release();
        }
        catch (Exception e)
        {
            ControlPlaneLog.ReleaseFailed(_logger, _name, what, e);
        }
    }

    /// <summary>
    /// The most pages this connection can have mapped at once: the ring pages, every persistent
    /// grant the data plane may cache, and every segment plus indirect page of a full ring.
    /// </summary>
    internal static uint MaxGrantsFor(FrontendRings rings, BackendOptions options)
    {
        int entries = RingGeometry.EntryCountForPages(rings.Protocol, rings.RingPageCount);
        int segmentsPerRequest = Math.Max(BlkifLimits.MaxSegmentsPerRequest, options.MaxIndirectSegments + BlkifLimits.MaxIndirectPagesPerRequest);
        long perQueue = rings.RingPageCount
            + (options.PersistentGrants ? options.DataPlane.PersistentGrantCacheSize : 0)
            + ((long)entries * segmentsPerRequest);
        return (uint)Math.Min(uint.MaxValue, perQueue * rings.Queues.Count);
    }

    private sealed class Queue(FrontendQueue frontend)
    {
        public FrontendQueue Frontend { get; } = frontend;
        public nint RingAddress { get; set; }
        public IEventChannels? Channels { get; set; }
        public uint LocalPort { get; set; }
        public bool Bound { get; set; }
        public BlkifRing? Ring { get; set; }
        public bool Started { get; set; }
        public bool Undrained { get; set; }
    }
}
