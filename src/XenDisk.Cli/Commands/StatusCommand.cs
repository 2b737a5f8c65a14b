using System.CommandLine;
using XenDisk.Service.Configuration;
using XenDisk.Service.Control;

namespace XenDisk.Cli.Commands;

/// <summary>`xendisk status`: asks the running service, through its control socket, for its devices and counters.</summary>
internal static class StatusCommand
{
    /// <summary>No service answered (sysexits EX_UNAVAILABLE).</summary>
    public const int ServiceUnavailable = 69;

    /// <summary>--socket, as every command that talks to the running service takes it.</summary>
    public static Option<string> SocketOption() => new("--socket")
    {
        Description = "The service's control socket (Control:SocketPath)",
        DefaultValueFactory = _ => ControlSettings.DefaultSocketPath,
    };

    public static Command Create()
    {
        var socket = SocketOption();
        var json = new Option<bool>("--json") { Description = "Print the status as JSON, for scripts" };
        var collect = new Option<bool>("--collect")
        {
            Description = "Run a full garbage collection in the service first, so that its memory figures show only what it still holds",
        };
        var command = new Command("status", "Show the running service's devices, negotiated features, live counters and hydrations")
        {
            socket, json, collect,
        };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            ServiceStatusReport report;
            try
            {
                report = await ControlClient.GetStatusAsync(parseResult.GetValue(socket)!, parseResult.GetValue(collect), cancellationToken).ConfigureAwait(false);
            }
            catch (ControlClientException e)
            {
                return CommandErrors.Failed(parseResult, e.Message, ServiceUnavailable);
            }

            await parseResult.InvocationConfiguration.Output.WriteAsync(parseResult.GetValue(json)
                ? ControlClient.ToJson(report) + Environment.NewLine
                : StatusTextFormatter.Format(report)).ConfigureAwait(false);
            return 0;
        });
        return command;
    }
}
