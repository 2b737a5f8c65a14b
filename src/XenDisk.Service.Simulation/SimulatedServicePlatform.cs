using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using XenDisk.Service.Configuration;
using XenDisk.Service.Hosting;
using XenDisk.Service.Storage;
using XenDisk.Xen;

namespace XenDisk.Service.Simulation;

/// <summary>
/// The platform of `xendisk serve --simulate`: dom0 of a <see cref="SimulationEnvironment"/>'s simulated
/// hypervisor instead of native Xen, the demo images' directory allowed besides the configured ones,
/// and the demo guests (<see cref="SimulatedGuestsService"/>) started after the backend.
/// </summary>
public sealed class SimulatedServicePlatform : IServicePlatform
{
    public void AddPlatform(IServiceCollection services, IConfiguration configuration)
    {
        string? imageDirectory = configuration.GetValue<string?>("Simulation:ImageDirectory");
        services.AddSingleton(_ => new SimulationEnvironment(imageDirectory));
        services.AddSingleton<IXenPlatform>(sp =>
        {
            var environment = sp.GetRequiredService<SimulationEnvironment>();
            return environment.Hypervisor.Platform(environment.Hypervisor.Dom0);
        });
        services.AddSingleton(sp =>
        {
            // The demo images are allowed in addition to the configured directories.
            var environment = sp.GetRequiredService<SimulationEnvironment>();
            StorageSettings storage = sp.GetRequiredService<IOptions<StorageSettings>>().Value;
            return new ImageDirectoryPolicy([.. storage.EffectiveAllowedImageDirectories, environment.ImageDirectory], storage.AllowBlockDevices);
        });
    }

    public void AddWorkload(IServiceCollection services) => services.AddHostedService<SimulatedGuestsService>();
}
