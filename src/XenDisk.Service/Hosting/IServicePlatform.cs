using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace XenDisk.Service.Hosting;

/// <summary>
/// A platform other than native Xen for the service host (`serve --simulate`): it registers the
/// <see cref="XenDisk.Xen.IXenPlatform"/> the backend runs on, with what goes with it, and hosted
/// services that run beside the backend. Implemented outside this assembly, so that the production
/// host links no simulator.
/// </summary>
public interface IServicePlatform
{
    /// <summary>Registers the IXenPlatform and the <see cref="Storage.ImageDirectoryPolicy"/>.</summary>
    void AddPlatform(IServiceCollection services, IConfiguration configuration);

    /// <summary>Registers hosted services started after the backend (so stopped before it).</summary>
    void AddWorkload(IServiceCollection services);
}
