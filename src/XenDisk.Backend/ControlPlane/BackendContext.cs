using Microsoft.Extensions.Logging;
using XenDisk.Storage;
using XenDisk.Xen;

namespace XenDisk.Backend.ControlPlane;

/// <summary>What every device of one <see cref="BlockBackend"/> shares. The backend owns all of it.</summary>
internal sealed class BackendContext(
    IXenPlatform platform,
    IXenStore store,
    IDiskProvider disks,
    BackendOptions options,
    ILogger logger,
    ILogger ringLogger,
    Action<BackendDevice> forget,
    Action<BackendDevice> connected)
{
    /// <summary>Watch tokens of frontend "state" keys start with this, followed by the device's backend path.</summary>
    public const string FrontendWatchTokenPrefix = "frontend:";

    public IXenPlatform Platform { get; } = platform;

    /// <summary>The backend's one xenstore connection; thread-safe, shared by the watch loop and every device.</summary>
    public IXenStore Store { get; } = store;

    /// <summary>The disks the devices have open, shared between the devices of one VM (see <see cref="SharedDisks"/>).</summary>
    public SharedDisks Disks { get; } = new(disks);

    public BackendOptions Options { get; } = options;

    public ILogger Logger { get; } = logger;

    public ILogger RingLogger { get; } = ringLogger;

    /// <summary>Called by a device once its backend node is gone and it has released everything.</summary>
    public Action<BackendDevice> Forget { get; } = forget;

    /// <summary>Called by a device (on its control task) each time it has started the rings of a connection.</summary>
    public Action<BackendDevice> Connected { get; } = connected;
}
