namespace XenDisk.Service.Tests.Support;

/// <summary>
/// Tests whose service exports metrics: a MeterProvider subscribes to the XenDisk meter by name, so it
/// would also see the instruments of another service host running in the same test process at the same
/// time (and the simulated devices of two hosts have the same paths). They run one at a time.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class XenDiskMeterCollection
{
    public const string Name = "XenDisk meter";
}
