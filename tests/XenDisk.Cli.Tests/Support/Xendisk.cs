using System.CommandLine;
using XenDisk.Cli.Commands;

namespace XenDisk.Cli.Tests.Support;

/// <summary>What one in-process invocation of the command line printed and returned.</summary>
public sealed record CliResult(int ExitCode, string Output, string Error)
{
    public override string ToString() => $"exit {ExitCode}\n--- stdout ---\n{Output}\n--- stderr ---\n{Error}";
}

/// <summary>
/// Runs the `xendisk` commands in-process, the tree Program builds, with stdout and stderr
/// captured through the invocation's writers (so tests may run in parallel).
/// </summary>
public static class Xendisk
{
    public static CliResult Run(params string[] args)
    {
        RootCommand root = Program.CreateRoot("xendisk (tests)");
        StringWriter output = new();
        StringWriter error = new();
        int exitCode = CommandLineErrors.Invoke(root, args, new InvocationConfiguration { Output = output, Error = error });
        return new CliResult(exitCode, output.ToString(), error.ToString());
    }

    /// <summary>Asserts that a failure was reported as a message, not as an unhandled exception's stack trace.</summary>
    public static void AssertNoStackTrace(CliResult result)
    {
        Assert.DoesNotContain("Unhandled exception", result.Error, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", result.Error, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", result.Output, StringComparison.Ordinal);
    }
}
