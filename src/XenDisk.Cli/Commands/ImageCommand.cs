using System.CommandLine;
using XenDisk.Cli.Commands.Image;

namespace XenDisk.Cli.Commands;

/// <summary>
/// `xendisk image ...`: image tools in qemu-img's argument style (create, info, check, map, snapshot,
/// commit, hydrate, rebase, convert, compare, resize, measure, bitmap, amend), so that operators' habits carry over. The describing subcommands take --json;
/// long work draws progress on stderr.
/// </summary>
internal static class ImageCommand
{
    public static Command Create()
    {
        Command image = new("image", "Create, inspect, check and maintain disk images (qemu-img style)")
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
            ImageMeasureCommand.Create(),
            ImageBitmapCommand.Create(),
            ImageAmendCommand.Create(),
            ImageUnlockCommand.Create(),
        };
        foreach (Command subcommand in image.Subcommands)
        {
            if (subcommand.Options.Any(o => o.Name == "--json"))
            {
                // qemu-img's --output=human|json, so that scripts written for it carry over.
                Option<string> output = new("--output") { Description = "Output format: human or json (--output=json is --json)" };
                output.AcceptOnlyFromAmong("human", "json");
                subcommand.Options.Add(output);
            }
        }
        return image;
    }
}
