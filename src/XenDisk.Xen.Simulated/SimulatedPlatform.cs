
namespace XenDisk.Xen.Simulated;

/// <summary>The ops table for code running in one simulated domain: each Open* returns a fresh handle of that domain.</summary>
public sealed class SimulatedPlatform : IXenPlatform
{
    private readonly SimulatedHypervisor _hypervisor;

    internal SimulatedPlatform(SimulatedHypervisor hypervisor, SimulatedDomain domain)
    {
        _hypervisor = hypervisor;
        Domain = domain;
    }

    public SimulatedDomain Domain { get; }

    public uint LocalDomainId => Domain.Id;

    public string Description => $"simulated (domain {Domain.Id})";

    public IGrantTable OpenGrantTable() => _hypervisor.OpenGrantTable(Domain);

    public IEventChannels OpenEventChannels() => new SimulatedEventChannels(_hypervisor, Domain);

    public IXenStore OpenXenStore() => _hypervisor.OpenXenStore(Domain);
}
