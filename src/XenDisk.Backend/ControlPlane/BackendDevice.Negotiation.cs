using System.Globalization;
using System.Numerics;
using XenDisk.Abi;
using XenDisk.Backend.DataPlane;
using XenDisk.Storage;
using XenDisk.Xen;

namespace XenDisk.Backend.ControlPlane;

// The two negotiation steps of blkif.h "Feature and Parameter Negotiation": publishing what we
// offer (then InitWait), and connecting to the rings the frontend published (then Connected).
internal sealed partial class BackendDevice
{
    /// <summary>
    /// Reads and validates the toolstack's keys, opens the disk and publishes our features and
    /// InitWait in one transaction (xen-blkback's probe + backend_changed; libxl runs the hotplug
    /// script once it sees InitWait). On failure nothing stays open.
    /// </summary>
    private async Task SetUpAsync()
    {
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
        string? vm = store.Read(XenStoreTransaction.None, store.GetDomainPath(configuration.FrontendDomainId) + "/vm");
        IBlockDevice disk;
        try
        {
            (disk, bool shared) = await _context.Disks.OpenAsync(vm, new DiskSpecification(configuration.Target, configuration.ReadOnly, configuration.Type))
                .ConfigureAwait(false);
            if (shared)
            {
                ControlPlaneLog.DiskShared(_context.Logger, Name, vm!);
            }
        }
        catch (StorageException e)
        {
            throw new DeviceSetupException($"cannot open disk \"{DeviceConfiguration.Printable(configuration.Target)}\": {e.Message}", e);
        }

        try
        {
            BlockDeviceInfo info = disk.Info;
            CheckDisk(info);
            bool readOnly = configuration.ReadOnly || info.ReadOnly;
            bool discard = _context.Options.Discard && info.SupportsDiscard && !readOnly;
            _disk = disk;
            _diskInfo = info;
            _readOnly = readOnly;
            _discardOffered = discard;
            _publishedSectors = SectorsOf(info);
            if (!CommitState(XenbusState.InitWait, t => PublishFeatures(t, info, discard)))
            {
                // The toolstack started removing the device meanwhile; the next look closes it.
                ForgetDisk(disk);
                return;
            }

            ControlPlaneLog.DeviceInitWait(_context.Logger, Name, info.Description, _publishedSectors, readOnly ? "read-only" : "read-write");
        }
        catch
        {
            ForgetDisk(disk);
            throw;
        }
    }

    private void ForgetDisk(IBlockDevice disk)
    {
        _disk = null;
        _diskInfo = null;
        _readOnly = false;
        _discardOffered = false;
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

    /// <summary>What we offer, written before InitWait so that the frontend reads it all at once.</summary>
    private bool PublishFeatures(XenStoreTransaction t, BlockDeviceInfo info, bool discard)
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
        Write(t, BlkifKeys.FeatureDiscard, discard ? "1" : "0");
        if (discard)
        {
            Write(t, BlkifKeys.DiscardGranularity, Text(Math.Max(info.DiscardGranularity, info.LogicalSectorSize)));
            Write(t, BlkifKeys.DiscardAlignment, Text(info.DiscardAlignment));
            Write(t, BlkifKeys.DiscardSecure, info.SupportsSecureDiscard ? "1" : "0");
        }

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
        Write(t, BlkifKeys.State, XenbusStateText.ToWire(XenbusState.InitWait));
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
