using System.CommandLine;
using XenDisk.Cli.Commands.Image;

namespace XenDisk.Cli.Commands;

/// <summary>
/// `xendisk image ...`: image tools in qemu-img's argument style (create, info, check, map, snapshot,
/// commit, hydrate, rebase), so that operators' habits carry over. Every subcommand takes --json;
/// long work draws progress on stderr.
/// </summary>
internal static class ImageCommand
{
    public static Command Create() => new("image", "Create, inspect, check and maintain disk images (qemu-img style)")
    {
        ImageCreateCommand.Create(),
        ImageInfoCommand.Create(),
        ImageCheckCommand.Create(),
        ImageMapCommand.Create(),
        ImageMaintenanceCommands.CreateSnapshot(),
        ImageMaintenanceCommands.CreateCommit(),
        ImageMaintenanceCommands.CreateHydrate(),
        ImageMaintenanceCommands.CreateRebase(),
    };
}
