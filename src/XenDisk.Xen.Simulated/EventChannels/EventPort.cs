namespace XenDisk.Xen.Simulated.EventChannels;

/// <summary>Xen's evtchn states (xen/common/event_channel.c ECS_*), the ones a PV device uses.</summary>
internal enum EventPortState
{
    /// <summary>ECS_UNBOUND: allocated for <see cref="EventPort.RemoteDomainId"/> to bind to, or left behind when the remote end closed.</summary>
    Unbound,
    /// <summary>ECS_INTERDOMAIN: connected to <see cref="EventPort.Peer"/>.</summary>
    Interdomain,
}

/// <summary>
/// One port of one domain. Binding fields change under the hypervisor's event lock; the delivery
/// bits (<see cref="Pending"/>, <see cref="Masked"/>) under the owning handle's lock.
/// </summary>
internal sealed class EventPort
{
    public EventPort(SimulatedDomain domain, uint number, SimulatedEventChannels owner)
    {
        Domain = domain;
        Number = number;
        Owner = owner;
    }

    public SimulatedDomain Domain { get; }

    public uint Number { get; }

    /// <summary>The handle that bound the port; null once unbound.</summary>
    public SimulatedEventChannels? Owner { get; set; }

    public EventPortState State { get; set; }

    public uint RemoteDomainId { get; set; }

    public EventPort? Peer { get; set; }

    /// <summary>An event arrived while the port was masked; Unmask delivers it.</summary>
    public bool Pending { get; set; }

    /// <summary>Delivered and not yet unmasked (Linux's evtchn driver masks a port when it fires).</summary>
    public bool Masked { get; set; }
}
