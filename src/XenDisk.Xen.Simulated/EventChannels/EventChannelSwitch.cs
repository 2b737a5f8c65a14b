using Tmds.Linux;

namespace XenDisk.Xen.Simulated.EventChannels;

/// <summary>
/// The hypervisor's side of event channels: per-domain port tables and the bind/close operations
/// of xen/common/event_channel.c. Binding changes are serialised by one lock; delivery only takes
/// the receiving handle's lock.
/// </summary>
internal sealed class EventChannelSwitch
{
    /// <summary>EVTCHN_2L_NR_CHANNELS for a 64-bit guest: the 2-level ABI's port limit.</summary>
    public const int MaxPortsPerDomain = 4096;

    private readonly SimulatedHypervisor _hypervisor;
    private readonly Lock _lock = new();

    public EventChannelSwitch(SimulatedHypervisor hypervisor)
    {
        _hypervisor = hypervisor;
    }

    public uint BindUnbound(SimulatedEventChannels owner, SimulatedDomain domain, uint remoteDomainId)
    {
        lock (_lock)
        {
            RequireLive(domain, "xenevtchn_bind_unbound_port");
            if (_hypervisor.FindDomain(remoteDomainId) is null)
            {
                throw new XenException("xenevtchn_bind_unbound_port", LibC.ESRCH, $"domain {remoteDomainId} does not exist");
            }

            EventPort port = AllocatePort(domain, owner, "xenevtchn_bind_unbound_port");
            port.State = EventPortState.Unbound;
            port.RemoteDomainId = remoteDomainId;
            owner.AttachPort(port);
            return port.Number;
        }
    }

    public EventPort BindInterdomain(SimulatedEventChannels owner, SimulatedDomain domain, uint remoteDomainId, uint remotePort)
    {
        lock (_lock)
        {
            RequireLive(domain, "xenevtchn_bind_interdomain");
            SimulatedDomain remote = _hypervisor.FindDomain(remoteDomainId)
                ?? throw new XenException("xenevtchn_bind_interdomain", LibC.ESRCH, $"domain {remoteDomainId} does not exist");
            EventPort? remoteEnd = remotePort < (uint)remote.EventPorts.Count ? remote.EventPorts[(int)remotePort] : null;
            if (remoteEnd?.Owner is null || remoteEnd.State != EventPortState.Unbound || remoteEnd.RemoteDomainId != domain.Id)
            {
                throw new XenException("xenevtchn_bind_interdomain", LibC.EINVAL,
                    $"port {remotePort} of domain {remoteDomainId} is not unbound for domain {domain.Id}");
            }

            EventPort local = AllocatePort(domain, owner, "xenevtchn_bind_interdomain");
            owner.Connect(local, remoteEnd);
            remoteEnd.Owner.Connect(remoteEnd, local);
            owner.AttachPort(local);
            return local;
        }
    }

    public void Unbind(SimulatedEventChannels owner, SimulatedDomain domain, uint localPort)
    {
        lock (_lock)
        {
            EventPort? port = localPort < (uint)domain.EventPorts.Count ? domain.EventPorts[(int)localPort] : null;
            if (port is null || port.Owner != owner)
            {
                throw new XenException("xenevtchn_unbind", LibC.EINVAL, $"port {localPort} is not bound by this handle");
            }

            CloseLocked(port);
        }
    }

    public void UnbindAll(SimulatedEventChannels owner, SimulatedDomain domain)
    {
        lock (_lock)
        {
            foreach (EventPort port in owner.SnapshotPorts())
            {
                CloseLocked(port);
            }
        }
    }

    /// <summary>A destroyed domain's ports all close; their peers see them go away.</summary>
    public void CloseDomain(SimulatedDomain domain)
    {
        lock (_lock)
        {
            for (int number = 0; number < domain.EventPorts.Count; number++)
            {
                if (domain.EventPorts[number] is EventPort port)
                {
                    CloseLocked(port);
                }
            }
        }
    }

    private void CloseLocked(EventPort port)
    {
        // evtchn_close: the remote end of an interdomain channel reverts to unbound-for-us, so the
        // same remote port can be bound again by a reconnecting backend.
        EventPort? peer = port.Peer;
        if (port.State == EventPortState.Interdomain && peer?.Owner is not null)
        {
            peer.Owner.RemoteClosed(peer, port.Domain.Id);
        }

        port.Owner?.DetachPort(port);
        port.Peer = null;
        port.Domain.EventPorts[(int)port.Number] = null;
    }

    private static EventPort AllocatePort(SimulatedDomain domain, SimulatedEventChannels owner, string operation)
    {
        List<EventPort?> ports = domain.EventPorts;

        // Port 0 is never valid (Xen reserves it); the lowest free port is used, as Xen does.
        for (int number = 1; number < ports.Count; number++)
        {
            if (ports[number] is null)
            {
                var reused = new EventPort(domain, (uint)number, owner);
                ports[number] = reused;
                return reused;
            }
        }

        if (ports.Count >= MaxPortsPerDomain)
        {
            throw new XenException(operation, LibC.ENOSPC, "no free event-channel port");
        }

        if (ports.Count == 0)
        {
            ports.Add(null);
        }

        var port = new EventPort(domain, (uint)ports.Count, owner);
        ports.Add(port);
        return port;
    }

    private static void RequireLive(SimulatedDomain domain, string operation)
    {
        if (domain.IsDestroyed)
        {
            throw new XenException(operation, LibC.ESRCH, $"domain {domain.Id} is destroyed");
        }
    }
}
