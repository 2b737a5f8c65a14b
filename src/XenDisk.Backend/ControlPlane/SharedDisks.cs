using XenDisk.Storage;

namespace XenDisk.Backend.ControlPlane;

/// <summary>
/// The disks the backend's devices have open, shared between the devices of one virtual machine.
/// <c>xl migrate</c> to the same host builds the incoming domain, with a device on each of the VM's
/// disks, while the outgoing domain (paused, its devices still attached) holds them; the two domains
/// carry the same VM ("vm" in the domain's xenstore directory, <c>/vm/UUID</c>, which the toolstack
/// writes and the guest cannot). Opening the disk a second time would be refused by the image locks
/// (two opens for writing conflict, as in QEMU), so a device of the same VM with the same target and
/// access shares the open disk instead, and the disk closes when its last device lets it go. Devices
/// of different VMs never share: the second one is refused by the image locks as before.
/// Thread-safe; owned by the <see cref="BlockBackend"/>.
/// </summary>
internal sealed class SharedDisks(IDiskProvider provider)
{
    private readonly Lock _gate = new();
    private readonly Dictionary<Key, Entry> _byKey = [];
    private readonly Dictionary<IBlockDevice, Entry> _byDisk = new(ReferenceEqualityComparer.Instance);

    /// <summary>
    /// The disk <paramref name="specification"/> names: the one a device of <paramref name="vm"/> has
    /// open already (or is opening: this waits for that open and shares its outcome), or a new open
    /// through the provider. A null <paramref name="vm"/> (a domain without one) never shares. Fails
    /// with <see cref="StorageException"/> as the provider does.
    ///
    /// The provider's open runs on a thread of its own, never on a thread-pool thread, and outside
    /// any lock: an open may take long (a qcow2 image with its base and refcounts to read on a loaded
    /// host, a dirty image to repair, a remote target to log in to), and after a restart the backend
    /// opens the disks of every guest at once. Held under a lock, one slow open stopped every other
    /// device from reaching InitWait (libxl gives up on a new device after 10 s); held on pool threads,
    /// a few slow opens starved the pool that runs the watch loop and every device's control work.
    /// </summary>
    public async Task<(IBlockDevice Disk, bool Shared)> OpenAsync(string? vm, DiskSpecification specification)
    {
        if (string.IsNullOrEmpty(vm))
        {
            return (await OpenOnOwnThread(() => provider.Open(specification)).ConfigureAwait(false), false);
        }

        Key key = new(vm, specification.Target, specification.ReadOnly);
        Entry? entry;
        bool shared;
        lock (_gate)
        {
            shared = _byKey.TryGetValue(key, out entry);
            if (shared)
            {
                entry!.Users++;
            }
            else
            {
                entry = new Entry(key);
                _byKey.Add(key, entry);

                // Set under _gate: a device that finds the entry always finds its open. A second device
                // of the same VM waits for this open rather than racing it into the image locks.
                Entry opening = entry;
                entry.Opening = OpenOnOwnThread(() => OpenShared(opening, specification));
            }
        }

        return (await entry.Opening!.ConfigureAwait(false), shared);
    }

    /// <summary>The first device's open of a shared disk; a device of the same VM that came meanwhile waits for it.</summary>
    private IBlockDevice OpenShared(Entry entry, DiskSpecification specification)
    {
        IBlockDevice disk;
        try
        {
            disk = provider.Open(specification);
        }
        catch
        {
            // The devices waiting for this open fail with it; the next one tries afresh.
            lock (_gate)
            {
                if (_byKey.TryGetValue(entry.Key, out Entry? current) && current == entry)
                {
                    _byKey.Remove(entry.Key);
                }
            }

            throw;
        }

        lock (_gate)
        {
            _byDisk.Add(disk, entry);
        }

        return disk;
    }

    private static Task<IBlockDevice> OpenOnOwnThread(Func<IBlockDevice> open) =>
        Task.Factory.StartNew(open, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    /// <summary>
    /// A device lets <paramref name="disk"/> go. Returns true when the caller held the last use and
    /// must close it (also for a disk opened without a VM, which is never shared).
    /// </summary>
    public bool Release(IBlockDevice disk)
    {
        lock (_gate)
        {
            if (!_byDisk.TryGetValue(disk, out Entry? entry))
            {
                return true;
            }

            if (--entry.Users > 0)
            {
                return false;
            }

            _byDisk.Remove(disk);
            _byKey.Remove(entry.Key);
            return true;
        }
    }

    /// <summary>Disks open (or opening) for devices of a VM, each counted once however many devices share it.</summary>
    public int Count
    {
        get
        {
            lock (_gate)
            {
                return _byKey.Count;
            }
        }
    }

    private readonly record struct Key(string Vm, string Target, bool ReadOnly);

    private sealed class Entry(Key key)
    {
        public Key Key { get; } = key;

        /// <summary>The one open of the disk; every device that shares it awaits this.</summary>
        public Task<IBlockDevice>? Opening { get; set; }

        public int Users { get; set; } = 1;
    }
}
