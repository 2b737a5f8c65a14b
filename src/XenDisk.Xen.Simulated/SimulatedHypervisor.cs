using XenDisk.Xen.Simulated.Grants;
using XenDisk.Xen.Simulated.EventChannels;
using XenDisk.Xen.Simulated.XenStore;
using Tmds.Linux;

namespace XenDisk.Xen.Simulated;

/// <summary>
/// An in-process stand-in for the hypervisor and xenstored, faithful where a PV backend depends on
/// it: grant mappings alias real guest pages, event channels follow Linux evtchn semantics, and
/// xenstore has xenstored's permissions, watches and transactions. See docs/SIMULATOR.md for what
/// it deliberately does not model.
/// Lifetime: stop every user (backends, frontends) before <see cref="Dispose"/>; memory they still
/// hold mapped afterwards is parked (valid but detached), never unmapped under their feet.
/// </summary>
public sealed class SimulatedHypervisor : IDisposable
{
    /// <summary>Guest memory of dom0: it only needs pages when it plays frontend in a test.</summary>
    public const int Dom0MemoryPages = 4096;

    private readonly Lock _lock = new();
    private readonly Dictionary<uint, SimulatedDomain> _domains = [];
    private readonly List<SimulatedDomain> _allDomains = [];
    private readonly List<SimulatedGrantTable> _grantTables = [];
    private readonly Dictionary<SimulatedDomain, SimulatedPlatform> _platforms = [];
    private uint _nextDomainId = 1;
    private int _activeGrantMappings;
    private bool _disposed;

    public SimulatedHypervisor()
    {
        XenStore = new XenStoreServer();
        EventSwitch = new EventChannelSwitch(this);
        Dom0 = AddDomain(0, "Domain-0", Dom0MemoryPages);
        XenStore.Mkdir(0, null, XenStoreTransaction.None, "/local/domain/0");
        XenStore.Write(0, null, XenStoreTransaction.None, "/local/domain/0/name", "Domain-0");
        XenStore.Write(0, null, XenStoreTransaction.None, "/local/domain/0/domid", "0");
    }

    public SimulatedDomain Dom0 { get; }

    /// <summary>Pages currently mapped through grants by any domain (0 when nothing leaks).</summary>
    public int ActiveGrantMappings => Volatile.Read(ref _activeGrantMappings);

    /// <summary>Nodes in the xenstore tree.</summary>
    public int XenStoreNodeCount => XenStore.NodeCount;

    /// <summary>Live domains, dom0 included.</summary>
    public IReadOnlyList<SimulatedDomain> Domains
    {
        get
        {
            lock (_lock)
            {
                return [.. _domains.Values.OrderBy(d => d.Id)];
            }
        }
    }

    internal XenStoreServer XenStore { get; }

    internal EventChannelSwitch EventSwitch { get; }

    /// <summary>
    /// Creates a domain the way the toolstack does: memory, then its xenstore home
    /// (/local/domain/N owned by dom0 and readable by N; device/ and data/ owned by N), then @introduceDomain.
    /// Like libxl__domain_make it writes "vm", naming the VM's /vm/UUID directory (a fresh UUID per
    /// domain): the backend reads it for every device it sets up.
    /// </summary>
    public SimulatedDomain CreateDomain(string name, int memoryPages = 4096)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(memoryPages);
        uint id;
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            id = _nextDomainId++;
        }

        SimulatedDomain domain = AddDomain(id, name, memoryPages);
        string home = domain.XenStorePath;
        string idText = id.ToString(System.Globalization.CultureInfo.InvariantCulture);
        XenStore.Mkdir(0, null, XenStoreTransaction.None, home);
        XenStore.SetPermissions(0, null, XenStoreTransaction.None, home, [new(0, XenStoreAccess.None), new(id, XenStoreAccess.Read)]);
        XenStore.Write(0, null, XenStoreTransaction.None, home + "/name", name);
        XenStore.Write(0, null, XenStoreTransaction.None, home + "/domid", idText);
        string vm = "/vm/" + Guid.NewGuid().ToString("D");
        XenStore.Write(0, null, XenStoreTransaction.None, vm + "/name", name);
        XenStore.Write(0, null, XenStoreTransaction.None, home + "/vm", vm);
        foreach (string writable in (ReadOnlySpan<string>)["device", "data"])
        {
            XenStore.Mkdir(0, null, XenStoreTransaction.None, home + "/" + writable);
            XenStore.SetPermissions(0, null, XenStoreTransaction.None, home + "/" + writable, [new(id, XenStoreAccess.None)]);
        }

        XenStore.FireSpecial(XenStorePath.IntroduceDomain);
        return domain;
    }

    /// <summary>
    /// Destroys a domain: its grants are revoked (mappings others hold stay valid memory, as a
    /// zombie domain's pages do), its event channels close (the remote ends become unbound), its
    /// xenstore connections close, /local/domain/N is removed, and @releaseDomain fires.
    /// </summary>
    public void DestroyDomain(SimulatedDomain domain)
    {
        ArgumentNullException.ThrowIfNull(domain);
        if (domain.Id == 0)
        {
            throw new InvalidOperationException("Domain 0 cannot be destroyed.");
        }

        lock (_lock)
        {
            if (!_domains.Remove(domain.Id))
            {
                return;
            }

            domain.MarkDestroyed();
        }

        domain.Grants.RevokeAll();
        EventSwitch.CloseDomain(domain);
        XenStore.DisconnectDomain(domain.Id);
        string? vm = XenStore.Read(0, null, XenStoreTransaction.None, domain.XenStorePath + "/vm");
        XenStore.Remove(0, null, XenStoreTransaction.None, domain.XenStorePath);
        if (vm is not null && vm.StartsWith("/vm/", StringComparison.Ordinal))
        {
            XenStore.Remove(0, null, XenStoreTransaction.None, vm);
        }

        XenStore.FireSpecial(XenStorePath.ReleaseDomain);
    }

    public SimulatedDomain? FindDomain(uint domainId)
    {
        lock (_lock)
        {
            return _domains.GetValueOrDefault(domainId);
        }
    }

    /// <summary>The ops table for code running in <paramref name="domain"/>.</summary>
    public IXenPlatform Platform(SimulatedDomain domain)
    {
        ArgumentNullException.ThrowIfNull(domain);
        lock (_lock)
        {
            if (!_platforms.TryGetValue(domain, out SimulatedPlatform? platform))
            {
                platform = new SimulatedPlatform(this, domain);
                _platforms.Add(domain, platform);
            }

            return platform;
        }
    }

    /// <summary>Test hook: the next <paramref name="count"/> xenstore commits fail with EAGAIN, as after a conflicting write.</summary>
    public void ForceXenStoreConflicts(int count) => XenStore.ForceConflicts(count);

    /// <summary>A xenstore connection of <paramref name="domain"/> with the concrete type (for tests).</summary>
    public SimulatedXenStore OpenXenStore(SimulatedDomain domain)
    {
        ArgumentNullException.ThrowIfNull(domain);
        if (domain.IsDestroyed)
        {
            throw new XenException("xs_open", LibC.ENODEV, $"domain {domain.Id} is destroyed");
        }

        return XenStore.Connect(domain);
    }

    /// <summary>A grant-table handle of <paramref name="domain"/> with the concrete type (for tests).</summary>
    public SimulatedGrantTable OpenGrantTable(SimulatedDomain domain)
    {
        ArgumentNullException.ThrowIfNull(domain);
        var table = new SimulatedGrantTable(this, domain);
        lock (_lock)
        {
            _grantTables.Add(table);
        }

        return table;
    }

    /// <summary>An event-channel handle of <paramref name="domain"/> with the concrete type (for tests).</summary>
    public SimulatedEventChannels OpenEventChannels(SimulatedDomain domain)
    {
        ArgumentNullException.ThrowIfNull(domain);
        return new SimulatedEventChannels(this, domain);
    }

    public void Dispose()
    {
        List<SimulatedGrantTable> tables;
        List<SimulatedDomain> domains;
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            tables = [.. _grantTables];
            domains = [.. _allDomains];
        }

        foreach (SimulatedGrantTable table in tables)
        {
            table.ParkMappings();
        }

        foreach (SimulatedDomain domain in domains)
        {
            XenStore.DisconnectDomain(domain.Id);
            domain.Memory.ParkView();
        }
    }

    /// <summary>
    /// Checking mode for teardown: an unmapped grant range is not given back to the address space
    /// but replaced by a private page full of a canary pattern and kept, so that a late write into it
    /// (I/O the backend let outlive the unmap, which on real Xen would land in a page the guest owns
    /// again) is found by <see cref="PagesWrittenAfterUnmap"/>. Set before the backend maps anything.
    /// </summary>
    public bool QuarantineUnmappedPages { get; set; }

    internal UnmapQuarantine Quarantine { get; } = new();

    /// <summary>
    /// Called (on the unmapping thread) right after a grant range was unmapped and quarantined: a
    /// test uses it to let storage I/O finish exactly then, to show that none still targets the range.
    /// </summary>
    public Action? AfterQuarantinedUnmap { get; set; }

    /// <summary>Quarantined pages (see <see cref="QuarantineUnmappedPages"/>) whose canary changed after their unmap.</summary>
    public int PagesWrittenAfterUnmap => Quarantine.CountDamagedPages();

    internal void AddActiveGrantMappings(int delta) => Interlocked.Add(ref _activeGrantMappings, delta);

    private SimulatedDomain AddDomain(uint id, string name, int memoryPages)
    {
        var domain = new SimulatedDomain(this, id, name, memoryPages);
        lock (_lock)
        {
            _domains.Add(id, domain);
            _allDomains.Add(domain);
        }

        return domain;
    }
}
