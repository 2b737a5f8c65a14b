using System.CommandLine;
using XenDisk.Service.Configuration;
using XenDisk.Service.Control;

namespace XenDisk.Cli.Commands;

/// <summary>`xendisk status`: asks the running service, through its control socket, for its devices and counters.</summary>
internal static class StatusCommand
{
    /// <summary>No service answered (sysexits EX_UNAVAILABLE).</summary>
    private const int ServiceUnavailable = 69;

    public static Command Create()
    {
        var socket = new Option<string>("--socket")
        {
            Description = "The service's control socket (Control:SocketPath)",
            DefaultValueFactory = _ => ControlSettings.DefaultSocketPath,
        };
        var json = new Option<bool>("--json") { Description = "Print the status as JSON, for scripts" };
        var command = new Command("status", "Show the running service's devices, negotiated features and live counters")
        {
            socket, json,
        };
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            ServiceStatusReport report;
            try
            {
                report = await ControlClient.GetStatusAsync(parseResult.GetValue(socket)!, cancellationToken).ConfigureAwait(false);
            }
            catch (ControlClientException e)
            {
                await Console.Error.WriteLineAsync("xendisk: " + e.Message).ConfigureAwait(false);
                return ServiceUnavailable;
            }

            await Console.Out.WriteAsync(parseResult.GetValue(json)
                ? ControlClient.ToJson(report) + Environment.NewLine
                : StatusTextFormatter.Format(report)).ConfigureAwait(false);
            return 0;
        });
        return command;
    }
}
