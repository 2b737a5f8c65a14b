using System.CommandLine;

namespace XenDisk.Cli.Commands;

/// <summary>How commands refuse bad arguments: a message on stderr and exit code 2, as usage errors do.</summary>
internal static class CommandErrors
{
    public const int UsageExitCode = 2;

    /// <summary>The work itself failed (a file that cannot be opened, an I/O error): exit code 1, as qemu-img does.</summary>
    public const int FailureExitCode = 1;

    public static int Invalid(string message)
    {
        Console.Error.WriteLine("xendisk: " + message);
        return UsageExitCode;
    }

    /// <summary>Like <see cref="Invalid(string)"/>, written to the invocation's error writer (which tests capture).</summary>
    public static int Invalid(ParseResult parse, string message)
    {
        parse.InvocationConfiguration.Error.WriteLine("xendisk: " + message);
        return UsageExitCode;
    }

    /// <summary>Reports a failure of the work (not of the arguments) on the invocation's error writer.</summary>
    public static int Failed(ParseResult parse, string message, int exitCode = FailureExitCode)
    {
        parse.InvocationConfiguration.Error.WriteLine("xendisk: " + message);
        return exitCode;
    }
}
