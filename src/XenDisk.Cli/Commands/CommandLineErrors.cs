using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Invocation;
using System.CommandLine.Parsing;
using XenDisk.Cli.Commands.Image;

namespace XenDisk.Cli.Commands;

/// <summary>
/// How every verb reports a command line it cannot parse: one line naming the token at fault, a hint
/// to --help, and exit code 2, instead of the parser's default (the whole help text, then the errors,
/// exit code 1), which buries the error under a screen of options.
/// </summary>
internal static class CommandLineErrors
{
    /// <summary>
    /// Prepares every command under <paramref name="root"/>: the parser takes a token it does not know,
    /// such as "--foo" in `image info --foo IMG`, as the value of the next argument, and then complains
    /// about IMG. The token at fault is named instead: an option-looking argument value is an unknown
    /// option (sizes such as "-1G" for resize are not), and tokens left over are reported by <see cref="Invoke"/>.
    /// </summary>
    public static TCommand NameUnknownTokens<TCommand>(TCommand root)
        where TCommand : Command
    {
        Prepare(root);
        return root;
    }

    /// <summary>Parses and runs <paramref name="args"/>; a command line that does not parse is refused in one line.</summary>
    public static int Invoke(Command root, string[] args, InvocationConfiguration configuration)
    {
        ParseResult parse = root.Parse(args);
        if (parse.Action is ParseErrorAction || (parse.Action is not null and not HelpAction && parse.UnmatchedTokens.Count > 0))
        {
            string message = parse.Errors.Count > 0 ? parse.Errors[0].Message : Unexpected(parse.UnmatchedTokens[0]);
            configuration.Error.WriteLine("xendisk: " + message);
            configuration.Error.WriteLine($"Try '{CommandPath(parse.CommandResult)} --help' for more information.");
            return CommandErrors.UsageExitCode;
        }
        return parse.Invoke(configuration);
    }

    private static string Unexpected(string token) =>
        CommandRunner.LooksLikeOption(token) ? $"unknown option '{token}'" : $"unexpected argument '{token}'";

    private static string CommandPath(CommandResult command)
    {
        List<string> names = [];
        for (SymbolResult? result = command; result != null; result = result.Parent)
        {
            if (result is CommandResult { Command: var c })
            {
                names.Add(c is RootCommand ? "xendisk" : c.Name);
            }
        }
        names.Reverse();
        return string.Join(' ', names);
    }

    private static void Prepare(Command command)
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
        foreach (Command subcommand in command.Subcommands)
        {
            Prepare(subcommand);
        }
    }
}
