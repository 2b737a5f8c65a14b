namespace XenDisk.Service.Tests.Support;

/// <summary>
/// Tests that touch process-wide state run one at a time: a MeterProvider subscribes to the XenDisk
/// meter by name, so it would also see the instruments of another service host running in the same
/// process (and the simulated devices of two hosts have the same paths); and systemd's notifier reads
/// $NOTIFY_SOCKET from the process environment.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ProcessWideCollection
{
    public const string Name = "Process-wide state";
}
