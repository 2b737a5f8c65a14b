using Microsoft.Extensions.Logging;

namespace XenDisk.Cli.Commands;

/// <summary>Console logging for the command line: lifecycle lines on stderr, so stdout stays clean for --json.</summary>
internal static class CommandLogging
{
    public static ILoggerFactory Create(bool verbose) => LoggerFactory.Create(builder =>
    {
        builder.SetMinimumLevel(verbose ? LogLevel.Information : LogLevel.Warning);
        builder.AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "HH:mm:ss.fff ";
        });
        builder.AddConsole(o => o.LogToStandardErrorThreshold = LogLevel.Trace);
    });
}
