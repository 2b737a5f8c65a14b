using System.Globalization;
using System.Numerics;
using XenDisk.Abi;
using XenDisk.Backend.DataPlane;
using XenDisk.Storage;
using XenDisk.Xen;

namespace XenDisk.Backend.ControlPlane;

// The negotiation steps of blkif.h "Feature and Parameter Negotiation": publishing what we offer
// (then InitWait), publishing the disk once it is open, and connecting to the rings the frontend
// published (then Connected).
internal sealed partial class BackendDevice
{
    /// <summary>
    /// Reads and validates the toolstack's keys and publishes the disk-independent offers and InitWait
    /// in one transaction, then starts opening the disk beside it (xen-blkback's probe switches to
    /// InitWait at once and opens the vbd later, in backend_changed). libxl runs the hotplug script
    /// once it sees InitWait and gives up on a device that has not reached it within 10 s of its
    /// creation, while an open may take seconds (a qcow2 overlay and its base on a loaded host, a
    /// disk still held by the old domain of the same VM). The open's completion kicks the device,
    /// which then publishes the disk (<see cref="CompleteOpenAsync"/>).
    /// </summary>
    private void SetUp()
    {
        TimeProvider clock = _context.Options.DataPlane.TimeProvider;
        long started = clock.GetTimestamp();
        long discovered = _setUpCount++ == 0 ? _createdAt : started;
        IXenStore store = _context.Store;
        _error = null;
        DeviceConfiguration configuration = DeviceConfiguration.Read(
            key => store.Read(XenStoreTransaction.None, Key(key)), FrontendDomainId, DeviceId, store.GetDomainPath);

        if (_frontendWatched && _configuration!.FrontendPath != configuration.FrontendPath)
        {
            store.Unwatch(_configuration.FrontendPath + "/" + BlkifKeys.State, FrontendWatchToken);
            _frontendWatched = false;
        }

        _configuration = configuration;
        if (!_frontendWatched)
        {
            store.Watch(configuration.FrontendPath + "/" + BlkifKeys.State, FrontendWatchToken);
            _frontendWatched = true;
        }

        // The frontend domain's VM (/vm/UUID), written by the toolstack: a domain that xl migrate
        // builds on this host beside the outgoing one shares its disks (see SharedDisks).
        string domainPath = store.GetDomainPath(configuration.FrontendDomainId);
        string? vm = store.Read(XenStoreTransaction.None, domainPath + "/vm");
        // The domain's name (the toolstack's, not the guest's to change) names the device in metrics.
        _frontendName = store.Read(XenStoreTransaction.None, domainPath + "/name") is { Length: > 0 } name ? DeviceConfiguration.Printable(name) : null;
        long keysRead = clock.GetTimestamp();
        if (!CommitState(XenbusState.InitWait, PublishOffers))
        {
            // The toolstack started removing the device meanwhile; the next look closes it.
            return;
        }

        long committed = clock.GetTimestamp();
        _opening = OpenDiskAsync(vm, configuration);

        // Kicked once the open is over, whatever its outcome; a retired device ignores the kick and
        // releases the disk itself (ReleaseAllAsync waits for the open).
        _opening.ContinueWith(_ => TryKick(), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        _initWaitAt = committed;
        _discoveredAt = discovered;
        ControlPlaneLog.DeviceInitWait(
            _context.Logger,
            Name,
            Milliseconds(discovered, committed),
            Milliseconds(discovered, started),
            Milliseconds(started, keysRead),
            Milliseconds(keysRead, committed));
    }

    /// <summary>
    /// The disk open, on a thread of its own (SharedDisks). Completes with the disk, or fails with a
    /// <see cref="DeviceSetupException"/> that names the target; records when it completed.
    /// </summary>
    private async Task<OpenedDisk> OpenDiskAsync(string? vm, DeviceConfiguration configuration)
    {
        TimeProvider clock = _context.Options.DataPlane.TimeProvider;
        long started = clock.GetTimestamp();
        try
        {
            (IBlockDevice disk, bool shared) = await _context.Disks.OpenAsync(vm, new DiskSpecification(configuration.Target, configuration.ReadOnly, configuration.Type))
                .ConfigureAwait(false);
            return new OpenedDisk(disk, shared ? vm : null, started, clock.GetTimestamp());
        }
        catch (StorageException e)
        {
            throw new DeviceSetupException($"cannot open disk \"{DeviceConfiguration.Printable(configuration.Target)}\": {e.Message}", e);
        }
    }

    /// <summary>
    /// Takes the completed open: checks the disk and publishes what depends on it (discard, size and
    /// sector size) with the disk-opened marker the hotplug script waits for, in one transaction.
    /// A failed open throws, for <see cref="FailAsync"/> to report (the "error" node for the hotplug
    /// script, or Closed). On any failure, and when the device is no longer in InitWait (the
    /// toolstack removed it meanwhile), nothing stays open.
    /// </summary>
    private async Task CompleteOpenAsync()
    {
        TimeProvider clock = _context.Options.DataPlane.TimeProvider;
        Task<OpenedDisk> opening = _opening!;
        _opening = null;
        OpenedDisk opened = await opening.ConfigureAwait(false);
        long picked = clock.GetTimestamp();
        IBlockDevice disk = opened.Disk;
        if (opened.SharedWithVm is { } vm)
        {
            ControlPlaneLog.DiskShared(_context.Logger, Name, vm);
        }

        try
        {
            BlockDeviceInfo info = disk.Info;
            CheckDisk(info);
            bool readOnly = _configuration!.ReadOnly || info.ReadOnly;
            bool discard = _context.Options.Discard && info.SupportsDiscard && !readOnly;

            // As CommitState does for "state": the snapshot shows the open disk before its keys
            // (and the disk-opened marker) commit, so that whoever the marker wakes finds it in
            // BlockBackend.Devices. ForgetDisk takes it back if the commit does not happen.
            _disk = disk;
            _diskInfo = info;
            _readOnly = readOnly;
            _discardOffered = discard;
            _publishedSectors = SectorsOf(info);
            _status = BuildStatus();
            if (!XenStoreTransactions.Run(_context.Store, t => PublishDisk(t, info, discard)))
            {
                // Removed, or closed by the toolstack, while the disk was opening.
                ForgetDisk(disk);
                return;
            }

            long committed = clock.GetTimestamp();
            ControlPlaneLog.DiskOpened(
                _context.Logger,
                Name,
                info.Description,
                _publishedSectors,
                readOnly ? "read-only" : "read-write",
                Milliseconds(_discoveredAt, committed),
                Milliseconds(_discoveredAt, _initWaitAt),
                Milliseconds(opened.Started, opened.Completed),
                Milliseconds(opened.Completed, picked),
                Milliseconds(picked, committed));
        }
        catch
        {
            ForgetDisk(disk);
            throw;
        }
    }

    private double Milliseconds(long from, long to) => _context.Options.DataPlane.TimeProvider.GetElapsedTime(from, to).TotalMilliseconds;

    /// <summary>A completed open: the disk, the VM whose open disk it shares (or null), and when the open started and ended.</summary>
    private sealed record OpenedDisk(IBlockDevice Disk, string? SharedWithVm, long Started, long Completed);

    /// <summary>Waits for an open still in progress and closes what it opened (the device is going away).</summary>
    private async Task AbandonOpenAsync()
    {
        Task<OpenedDisk>? opening = _opening;
        if (opening is null)
        {
            return;
        }

        _opening = null;
        try
        {
            OpenedDisk opened = await opening.ConfigureAwait(false);
            if (_context.Disks.Release(opened.Disk))
            {
                opened.Disk.Dispose();
            }
        }
        catch (DeviceSetupException e)
        {
            // The open failed: nothing to close, and nobody left to tell but the log.
            ControlPlaneLog.DeviceFailed(_context.Logger, Name, e.Message, null);
        }
        catch (Exception e)
        {
            ControlPlaneLog.ReleaseFailed(_context.Logger, Name, "the disk being opened", e);
        }
    }

    private void ForgetDisk(IBlockDevice disk)
    {
        _disk = null;
        _diskInfo = null;
        _readOnly = false;
        _discardOffered = false;
        _publishedSectors = 0;
        _status = BuildStatus();
        if (_context.Disks.Release(disk))
        {
            disk.Dispose();
        }
    }

    private static void CheckDisk(BlockDeviceInfo info)
    {
        // blkif.h "sector-size": a multiple of 512 that the guest can use as its logical block size.
        if (info.LogicalSectorSize < BlkifLimits.SectorSize || info.LogicalSectorSize > XenPage.Size || !BitOperations.IsPow2(info.LogicalSectorSize))
        {
            throw new DeviceSetupException($"the disk's logical sector size {info.LogicalSectorSize} is not a power of two between 512 and 4096");
        }

        if (info.SizeBytes < 0)
        {
            throw new DeviceSetupException($"the disk reports a negative size ({info.SizeBytes})");
        }
    }

    /// <summary>
    /// What we offer whatever the disk, written with InitWait so that the frontend reads it all at
    /// once: Linux blkfront's talk_to_blkback reads multi-queue-max-queues, max-ring-page-order and
    /// (in recent kernels) feature-persistent at InitWait; the disk's keys it reads only at Connected
    /// (blkfront_connect, blkfront_gather_backend_features), which <see cref="PublishDisk"/> writes
    /// once the disk is open. The marker of an earlier open (a restart) and any old error go.
    /// </summary>
    private bool PublishOffers(XenStoreTransaction t)
    {
        if (IsBeingRemoved(t) || _context.Store.Directory(t, BackendPath) is null)
        {
            return false;
        }

        BackendOptions options = _context.Options;

        // Flushes and barriers are always honoured: both become a storage flush (after the
        // preceding writes, for a barrier), which is correct whether or not the disk caches writes.
        Write(t, BlkifKeys.FeatureFlushCache, "1");
        Write(t, BlkifKeys.FeatureBarrier, "1");
        if (options.MaxIndirectSegments > 0)
        {
            Write(t, BlkifKeys.FeatureMaxIndirectSegments, Text(options.MaxIndirectSegments));
        }
        else
        {
            _context.Store.Remove(t, Key(BlkifKeys.FeatureMaxIndirectSegments));
        }

        Write(t, BlkifKeys.FeaturePersistent, options.PersistentGrants ? "1" : "0");
        Write(t, BlkifKeys.MultiQueueMaxQueues, Text(options.MaxQueues));
        Write(t, BlkifKeys.MaxRingPageOrder, Text(options.MaxRingPageOrder));

        // The older spelling of the same limit, for frontends that still read max-ring-pages.
        Write(t, BlkifKeys.MaxRingPages, Text(1 << options.MaxRingPageOrder));
        _context.Store.Remove(t, Key(BlkifKeys.Error));
        _context.Store.Remove(t, Key(BlkifKeys.DiskOpened));
        Write(t, BlkifKeys.State, XenbusStateText.ToWire(XenbusState.InitWait));
        return true;
    }

    /// <summary>
    /// What depends on the open disk (blkback writes these in connect(); the frontend reads them at
    /// Connected), and the marker the hotplug script waits for before it reports the device ready.
    /// Declines when the device has left InitWait or is going offline: the toolstack removed it while
    /// the disk was opening.
    /// </summary>
    private bool PublishDisk(XenStoreTransaction t, BlockDeviceInfo info, bool discard)
    {
        IXenStore store = _context.Store;
        if (store.Directory(t, BackendPath) is null
            || !(BackendPaths.TryParseDecimal(store.Read(t, Key(BlkifKeys.Online)), out uint online) && online != 0)
            || !(XenbusStateText.TryParse(store.Read(t, Key(BlkifKeys.State)), out XenbusState state) && state == XenbusState.InitWait))
        {
            return false;
        }

        Write(t, BlkifKeys.FeatureDiscard, discard ? "1" : "0");
        if (discard)
        {
            Write(t, BlkifKeys.DiscardGranularity, Text(Math.Max(info.DiscardGranularity, info.LogicalSectorSize)));
            Write(t, BlkifKeys.DiscardAlignment, Text(info.DiscardAlignment));
            Write(t, BlkifKeys.DiscardSecure, info.SupportsSecureDiscard ? "1" : "0");
        }

        Write(t, BlkifKeys.Sectors, Text(SectorsOf(info)));
        Write(t, BlkifKeys.SectorSize, Text(info.LogicalSectorSize));
        Write(t, BlkifKeys.PhysicalSectorSize, Text(Math.Max(info.PhysicalSectorSize, info.LogicalSectorSize)));
        Write(t, BlkifKeys.DiskOpened, "1");
        return true;
    }

    /// <summary>
    /// Reads the frontend's ring details, maps and binds every queue, starts the rings, then
    /// publishes the disk's geometry and Connected in one transaction (xen-blkback connect_ring + connect).
    /// </summary>
    private async Task ConnectAsync()
    {
        IXenStore store = _context.Store;
        BackendOptions options = _context.Options;
        string frontendPath = _configuration!.FrontendPath;
        FrontendRings rings = FrontendRings.Read(
            key => store.Read(XenStoreTransaction.None, frontendPath + "/" + key), options.MaxQueues, options.MaxRingPageOrder);

        // The size as it is now (blkback reads vbd_sz at connect): the disk may have grown while
        // no frontend was connected.
        BlockDeviceInfo info = _disk!.Refresh();
        _diskInfo = info;
        var features = new NegotiatedFeatures
        {
            PersistentGrants = options.PersistentGrants && rings.PersistentGrants,
            MaxIndirectSegments = options.MaxIndirectSegments,
            ReadOnly = _readOnly,
            Discard = _discardOffered,
            SecureDiscard = _discardOffered && info.SupportsSecureDiscard,
        };

        DeviceConnection connection = await DeviceConnection.OpenAsync(
            Name,
            _context.Platform,
            FrontendDomainId,
            _disk!,
            rings,
            features,
            options,
            _context.Logger,
            _context.RingLogger,
            () => TryKick()).ConfigureAwait(false);
        _connection = connection;

        // Announced before the frontend is told Connected, so that whoever watches for new rings
        // (telemetry) has them before the first request arrives.
        _status = BuildStatus();
        _context.Connected(this);

        VdiskInfo vdisk = _readOnly ? VdiskInfo.ReadOnly : VdiskInfo.None;
        if (string.Equals(store.Read(XenStoreTransaction.None, frontendPath + "/" + BlkifKeys.DeviceType), "cdrom", StringComparison.Ordinal))
        {
            vdisk |= VdiskInfo.CdRom;
        }

        if (ReadBackend(BlkifKeys.Removable) == "1")
        {
            vdisk |= VdiskInfo.Removable;
        }

        ulong sectors = SectorsOf(info);
        bool connected = CommitState(XenbusState.Connected, t =>
        {
            if (IsBeingRemoved(t) || store.Directory(t, BackendPath) is null)
            {
                return false;
            }

            Write(t, BlkifKeys.Sectors, Text(sectors));
            Write(t, BlkifKeys.SectorSize, Text(info.LogicalSectorSize));
            Write(t, BlkifKeys.PhysicalSectorSize, Text(Math.Max(info.PhysicalSectorSize, info.LogicalSectorSize)));
            Write(t, BlkifKeys.Info, Text((uint)vdisk));
            Write(t, BlkifKeys.State, XenbusStateText.ToWire(XenbusState.Connected));
            return true;
        });

        if (!connected)
        {
            await DisconnectAsync("toolstack removal during connect").ConfigureAwait(false);
            return;
        }

        _publishedSectors = sectors;
        ControlPlaneLog.DeviceConnected(
            _context.Logger, Name, rings.Queues.Count, rings.RingPageCount, BlkifProtocolNames.ToWire(rings.Protocol), features.PersistentGrants, features.MaxIndirectSegments);
    }

    private static string Text(long value) => value.ToString(CultureInfo.InvariantCulture);

    private static string Text(ulong value) => value.ToString(CultureInfo.InvariantCulture);
}
