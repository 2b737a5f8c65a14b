using System.CommandLine;
using XenDisk.Cli.Commands;

namespace XenDisk.Cli;

internal static class Program
{
    /// <summary>
    /// How long a SIGTERM/SIGINT may take to finish: the service drains in-flight guest I/O and
    /// flushes disks before it exits (each ring may take up to its drain time-out), and the default
    /// of System.CommandLine (2 s) would cut that short.
    /// </summary>
    private static readonly TimeSpan ShutdownAllowance = TimeSpan.FromSeconds(60);

    public static int Main(string[] args) =>
        CommandLineErrors.Invoke(CreateRoot("xendisk: a userspace Xen block backend with copy-on-write disks"), args,
            new InvocationConfiguration { ProcessTerminationTimeout = ShutdownAllowance });

    /// <summary>Every verb of the command line; the tests run the same tree in-process.</summary>
    internal static RootCommand CreateRoot(string description) =>
        CommandLineErrors.NameUnknownTokens(new RootCommand(description)
        {
            ServeCommand.Create(),
            StatusCommand.Create(),
            HydrateCommand.Create(),
            ResizeCommand.Create(),
            ImageCommand.Create(),
            IoCommand.Create(),
            DemoCommand.Create(),
            BenchCommand.Create(),
        });
}
