using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using XenDisk.Cli.Commands.Image;
using XenDisk.Service.Control;

namespace XenDisk.Cli.Commands;

/// <summary>
/// `xendisk hydrate DEVICE`: asks the running service to copy into an attached device's overlay
/// everything it still reads from its base, online, beside the guest's I/O, so that the overlay no
/// longer needs its base (`xendisk image hydrate` does the same to an image no guest has open).
/// The service does the work in the background; --wait follows it, --cancel stops it (what was
/// copied is kept, and hydrating again resumes).
/// </summary>
internal static class HydrateCommand
{
    /// <summary>How often --wait asks the service how far it got: a live bar, and nothing a control socket notices.</summary>
    private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(250);

    /// <summary>What --json prints: the device's backend path and its hydration, as `xendisk status --json` shows it.</summary>
    internal sealed record Report(string Device, HydrationReport Hydration);

    public static Command Create()
    {
        var device = new Argument<string>("DEVICE") { Description = "The attached device: DOMID/DEVICE as xendisk status shows it (3/51712 or 3/xvda), or its backend path" };
        var rate = new Option<string?>("--rate", "-r") { Description = "The most bytes per second taken from the base (e.g. 50M); unlimited when not given" };
        var wait = new Option<bool>("--wait") { Description = "Show progress until the hydration ends; the exit code is non-zero unless it finished" };
        var cancel = new Option<bool>("--cancel") { Description = "Cancel the device's running hydration (what was copied is kept; hydrate again to resume)" };
        var json = new Option<bool>("--json") { Description = "Print the device's hydration as JSON" };
        var socket = StatusCommand.SocketOption();
        var command = new Command("hydrate", "Copy the rest of an attached disk's base into its overlay, online, so the overlay no longer needs its base")
        {
            device, rate, wait, cancel, json, socket,
        };
        command.SetAction(async (parse, cancellationToken) =>
        {
            // Checked here rather than in validators: a validator sees an absent option as its default.
            string name = parse.GetValue(device)!;
            bool cancelling = parse.GetValue(cancel);
            string? rateText = parse.GetValue(rate);
            if (!DeviceSelector.TryParse(name, out _, out string? nameError))
            {
                return CommandErrors.Invalid(parse, nameError!);
            }

            if (cancelling && (rateText is not null || parse.GetValue(wait)))
            {
                return CommandErrors.Invalid(parse, "--cancel takes neither --rate nor --wait");
            }

            long bytesPerSecond = 0;
            if (rateText is not null && (!SizeText.TryParse(rateText, out bytesPerSecond, out _) || bytesPerSecond <= 0))
            {
                return CommandErrors.Invalid(parse, $"--rate {rateText}: give a positive number of bytes per second, e.g. 50M");
            }

            string socketPath = parse.GetValue(socket)!;
            try
            {
                (string path, HydrationReport hydration) = cancelling
                    ? await ControlClient.CancelHydrationAsync(socketPath, name, cancellationToken).ConfigureAwait(false)
                    : await ControlClient.StartHydrationAsync(socketPath, name, bytesPerSecond, cancellationToken).ConfigureAwait(false);
                if (parse.GetValue(wait))
                {
                    hydration = await FollowAsync(parse, socketPath, path, hydration, cancellationToken).ConfigureAwait(false);
                    return Finish(parse, name, path, hydration);
                }

                Print(parse, path, hydration, cancelling
                    ? Cancelled(name, path, hydration)
                    : $"Hydrating {path} in the background ({Limit(hydration)}); xendisk status shows its progress, xendisk hydrate {name} --cancel stops it.");
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
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                return CommandErrors.Failed(parse,
                    $"stopped waiting; the hydration goes on in the service (xendisk status shows it, xendisk hydrate {name} --cancel stops it)",
                    CommandRunner.InterruptedExitCode);
            }
        });
        return command;
    }

    /// <summary>--wait: asks the service for the device's status until its hydration is no longer running, drawing progress on stderr.</summary>
    private static async Task<HydrationReport> FollowAsync(ParseResult parse, string socketPath, string path, HydrationReport started, CancellationToken cancellationToken)
    {
        using ProgressBar progress = new(parse.Error(), "hydrating");
        HydrationReport current = started;
        while (current.IsRunning)
        {
            progress.Report(current.BytesDone, current.BytesTotal);
            await Task.Delay(PollInterval, cancellationToken).ConfigureAwait(false);
            ServiceStatusReport status = await ControlClient.GetStatusAsync(socketPath, cancellationToken: cancellationToken).ConfigureAwait(false);
            HydrationReport? now = status.Devices.FirstOrDefault(d => d.BackendPath == path)?.Hydration;
            if (now is null || now.StartedAt != started.StartedAt)
            {
                // The disk closed under it (detached, or the service restarted): the run stopped and was forgotten.
                return current with
                {
                    State = HydrationStates.Cancelled,
                    Error = "the device's disk closed (detached, or the service restarted); the hydration stopped with it",
                };
            }

            current = now;
        }

        if (current.State == HydrationStates.Finished)
        {
            progress.Complete();
        }

        return current;
    }

    private static int Finish(ParseResult parse, string name, string path, HydrationReport hydration)
    {
        switch (hydration.State)
        {
            case HydrationStates.Finished:
                Print(parse, path, hydration, string.Create(CultureInfo.InvariantCulture,
                    $"Hydrated {path}{(hydration.BytesCopied is { } copied ? $" ({copied} bytes copied from the base)" : "")}; its overlay no longer needs its base."));
                return 0;
            case HydrationStates.Failed:
                PrintJsonOnly(parse, path, hydration);
                return CommandErrors.Failed(parse, $"hydrating {path} failed: {hydration.Error}");
            default:
                PrintJsonOnly(parse, path, hydration);
                return CommandErrors.Failed(parse, string.Create(CultureInfo.InvariantCulture,
                    $"the hydration of {path} was cancelled at {Percent(hydration)}{(hydration.Error is null ? "" : ": " + hydration.Error)}; what was copied is kept, and xendisk hydrate {name} resumes it"));
        }
    }

    private static string Cancelled(string name, string path, HydrationReport hydration) => hydration.State switch
    {
        HydrationStates.Cancelled => string.Create(CultureInfo.InvariantCulture,
            $"Cancelled the hydration of {path} at {Percent(hydration)}; what was copied is kept, and xendisk hydrate {name} resumes it."),
        HydrationStates.Running => $"Asked the hydration of {path} to stop; it stops once its metadata is written back (xendisk status shows when).",
        _ => $"The hydration of {path} had already ended: {hydration.State}.",
    };

    private static string Limit(HydrationReport hydration) =>
        hydration.BytesPerSecond > 0
            ? string.Create(CultureInfo.InvariantCulture, $"at most {hydration.BytesPerSecond} bytes/s from the base")
            : "no rate limit";

    private static string Percent(HydrationReport hydration) =>
        hydration.BytesTotal > 0
            ? string.Create(CultureInfo.InvariantCulture, $"{100.0 * hydration.BytesDone / hydration.BytesTotal:0.0}% ({hydration.BytesDone} of {hydration.BytesTotal} bytes)")
            : "the start";

    private static void Print(ParseResult parse, string path, HydrationReport hydration, string text)
    {
        if (parse.GetValue<bool>("--json"))
        {
            PrintJsonOnly(parse, path, hydration);
        }
        else
        {
            parse.Out().WriteLine(text);
        }
    }

    private static void PrintJsonOnly(ParseResult parse, string path, HydrationReport hydration)
    {
        if (parse.GetValue<bool>("--json"))
        {
            parse.Out().WriteLine(JsonSerializer.Serialize(new Report(path, hydration), CliJsonContext.Default.Report));
        }
    }
}
