using System.CommandLine;
using Microsoft.Extensions.Logging;
using XenDisk.Service.Configuration;
using XenDisk.Service.Hosting;
using XenDisk.Service.Simulation;

namespace XenDisk.Cli.Commands;

/// <summary>`xendisk serve`: the backend as a service (see <see cref="XenDiskServiceHost"/> and docs/OPERATIONS.md).</summary>
internal static class ServeCommand
{
    public static Command Create()
    {
        var config = new Option<string?>("--config")
        {
            Description = $"The JSON configuration file (default {ServiceConfiguration.DefaultConfigPath}, which may be absent)",
        };
        var simulate = new Option<bool>("--simulate")
        {
            Description = "Run on the simulated hypervisor with demo guests under a light verified workload, for a machine without Xen",
        };
        var hotplugScript = new Option<string?>("--hotplug-script")
        {
            Description = "Serve only devices whose \"script\" key names this file (overrides Backend:HotplugScript)",
        };
        var kinds = new Option<string[]>("--kind")
        {
            Description = "Also serve this backend kind (vbd, vbd3); may be repeated (adds to Backend:Kinds)",
            DefaultValueFactory = _ => [],
            AllowMultipleArgumentsPerToken = false,
        };
        var verbose = new Option<bool>("--verbose", "-v") { Description = "Log debug lines too" };
        var command = new Command("serve", "Run the Xen block backend as a service (systemd Type=notify)")
        {
            config, simulate, hotplugScript, kinds, verbose,
        };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            string? configPath = parseResult.GetValue(config);
            var options = new ServeOptions
            {
                ConfigPath = configPath ?? ServiceConfiguration.DefaultConfigPath,
                ConfigPathExplicit = configPath is not null,
                Simulation = parseResult.GetValue(simulate) ? new SimulatedServicePlatform() : null,
                HotplugScript = parseResult.GetValue(hotplugScript),
                ExtraKinds = parseResult.GetValue(kinds) ?? [],
                MinimumLogLevel = parseResult.GetValue(verbose) ? LogLevel.Debug : null,
            };
            return await XenDiskServiceHost.RunAsync(options, Console.Error, cancellationToken).ConfigureAwait(false);
        });
        return command;
    }
}
