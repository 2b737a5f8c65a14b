using System.CommandLine;
using System.CommandLine.Parsing;
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
            NameUnknownOptions(subcommand);
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

    /// <summary>
    /// The parser takes a token it does not know, such as "--foo" in `image info --foo IMG`, as the
    /// value of the next argument, and then complains about IMG. The token at fault is named instead:
    /// an option-looking argument value is an unknown option (sizes such as "-1G" for resize are not),
    /// and tokens left over are reported by <see cref="CommandRunner.RunAsync"/>.
    /// </summary>
    private static void NameUnknownOptions(Command command)
    {
        command.TreatUnmatchedTokensAsErrors = false;
        command.Validators.Add(result =>
        {
            foreach (ArgumentResult argument in result.Children.OfType<ArgumentResult>())
            {
                foreach (Token token in argument.Tokens)
                {
                    if (CommandRunner.LooksLikeOption(token.Value))
                    {
                        result.AddError($"unknown option '{token.Value}'");
                        return;
                    }
                }
            }
        });
    }
}
