using System.CommandLine;
using XenDisk.Cli.Commands.Image;

namespace XenDisk.Cli.Commands;

/// <summary>
/// `xendisk image ...`: image tools in qemu-img's argument style (create, info, check, map, snapshot,
/// commit, hydrate, rebase, convert, compare, resize), so that operators' habits carry over. The describing subcommands take --json;
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
        ImageConvertCommand.Create(),
        ImageCompareCommand.Create(),
        ImageResizeCommand.Create(),
    };
}
