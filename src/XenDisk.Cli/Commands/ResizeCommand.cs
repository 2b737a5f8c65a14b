using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using XenDisk.Cli.Commands.Image;
using XenDisk.Service.Control;

namespace XenDisk.Cli.Commands;

/// <summary>
/// `xendisk resize DEVICE`: asks the running service to re-read an attached disk's size now (after an
/// <c>lvextend</c>, a grown raw file or a resized LUN) and to tell the guest, which sees an online
/// resize as with blkback. The service also looks by itself every Backend:SizeCheckSeconds; this is
/// for a script that wants the guest told before it goes on.
/// </summary>
internal static class ResizeCommand
{
    /// <summary>What --json prints.</summary>
    internal sealed record Report(string Device, ResizeReport Resize);

    public static Command Create()
    {
        var device = new Argument<string>("DEVICE") { Description = "The attached device: DOMID/DEVICE as xendisk status shows it (3/51712 or 3/xvda), or its backend path" };
        var json = new Option<bool>("--json") { Description = "Print the device's old and new size as JSON" };
        var socket = StatusCommand.SocketOption();
        var command = new Command("resize", "Re-read an attached disk's size now and tell its guest when it changed (online resize)")
        {
            device, json, socket,
        };
        command.SetAction(async (parse, cancellationToken) =>
        {
            string name = parse.GetValue(device)!;
            if (!DeviceSelector.TryParse(name, out _, out string? nameError))
            {
                return CommandErrors.Invalid(parse, nameError!);
            }

            try
            {
                (string path, ResizeReport resize) = await ControlClient.ResizeAsync(parse.GetValue(socket)!, name, cancellationToken).ConfigureAwait(false);
                if (parse.GetValue(json))
                {
                    parse.Out().WriteLine(JsonSerializer.Serialize(new Report(path, resize), CliJsonContext.Default.ResizeCommandReport));
                }
                else
                {
                    parse.Out().WriteLine(resize.Changed
                        ? string.Create(CultureInfo.InvariantCulture, $"Resized {path} from {resize.OldSizeBytes} to {resize.SizeBytes} bytes; the guest was told.")
                        : string.Create(CultureInfo.InvariantCulture, $"{path}: {resize.SizeBytes} bytes, as the guest already sees it."));
                }

                return 0;
            }
            catch (ControlRefusedException e)
            {
                return CommandErrors.Failed(parse, e.Message);
            }
            catch (ControlClientException e)
            {
                return CommandErrors.Failed(parse, e.Message, StatusCommand.ServiceUnavailable);
            }
        });
        return command;
    }
}
