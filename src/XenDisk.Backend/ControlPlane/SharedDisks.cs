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
    /// open already, or a new open through the provider. A null <paramref name="vm"/> (a domain without
    /// one) never shares. Throws <see cref="StorageException"/> as the provider does.
    /// </summary>
    public IBlockDevice Open(string? vm, DiskSpecification specification, out bool shared)
    {
        shared = false;
        if (string.IsNullOrEmpty(vm))
        {
            return provider.Open(specification);
        }

        Key key = new(vm, specification.Target, specification.ReadOnly);
        lock (_gate)
        {
            if (_byKey.TryGetValue(key, out Entry? entry))
            {
                entry.Users++;
                shared = true;
                return entry.Disk;
            }

            // Opened under the lock: a second device of the same VM waits for this open and shares it,
            // rather than racing it into the image locks.
            IBlockDevice disk = provider.Open(specification);
            entry = new Entry(key, disk);
            _byKey.Add(key, entry);
            _byDisk.Add(disk, entry);
            return disk;
        }
    }

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

    private readonly record struct Key(string Vm, string Target, bool ReadOnly);

    private sealed class Entry(Key key, IBlockDevice disk)
    {
        public Key Key { get; } = key;

        public IBlockDevice Disk { get; } = disk;

        public int Users { get; set; } = 1;
    }
}
