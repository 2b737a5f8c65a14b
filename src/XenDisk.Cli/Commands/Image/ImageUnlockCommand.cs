using System.CommandLine;
using Microsoft.Extensions.Logging;
using XenDisk.Cow.Overlays;
using XenDisk.Storage;
using XenDisk.Storage.Iscsi;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// `xendisk image unlock [--force] URL|IMAGE`: shows, and with --force breaks, the SCSI-3 persistent
/// reservation a host holds on an iSCSI LUN. Breaking is for a host that died holding it: the holder
/// loses its registration (it can write no more, should it come back) and the LUN is left unreserved
/// for the next host to take. Every break is logged, naming the key that was preempted. For an image
/// file it shows who holds the file's locks, which end only with their holder.
/// </summary>
internal static class ImageUnlockCommand
{
    public static Command Create()
    {
        var force = new Option<bool>("--force") { Description = "Break the reservation (preempt the holder's key); without it, only show the holder" };
        var target = new Argument<string>("IMAGE") { Description = "The LUN, iscsi://HOST[:PORT]/IQN/LUN, or an image file" };
        var command = new Command("unlock", "Show or break the persistent reservation a host holds on an iSCSI LUN; show who holds an image file's locks") { force, target };
        command.SetAction((parse, cancellationToken) => CommandRunner.RunAsync(parse, cancellationToken, () =>
        {
            string text = parse.GetValue(target)!;
            if (!ImageLuns.IsLun(text))
            {
                return UnlockFile(parse, text, parse.GetValue(force));
            }
            IscsiUrl url;
            try
            {
                url = IscsiUrl.Parse(text);
            }
            catch (StorageException e)
            {
                return CommandErrors.Invalid(parse, e.Message);
            }
            IscsiOptions options = ImageLuns.HostOptions();
            if (!parse.GetValue(force))
            {
                IscsiReservationHolder? holder = IscsiBlockDevice.ReadReservation(url, options);
                parse.Out().WriteLine(holder is { } held ? $"{url}: reserved by {held}" : $"{url}: not reserved");
                return 0;
            }
            IscsiReservationHolder? broken = IscsiBlockDevice.BreakReservation(url, options);
            using ILoggerFactory logs = CommandLogging.Create(verbose: false);
            ILogger logger = logs.CreateLogger("xendisk");
            if (broken is { } was)
            {
                logger.LogWarning("Broke the persistent reservation of {Holder} on {Url} (unlock --force)", was, url);
                parse.Out().WriteLine($"{url}: broke the reservation of {was}; the LUN is unreserved");
            }
            else
            {
                parse.Out().WriteLine($"{url}: not reserved; nothing to break");
            }
            return 0;
        }));
        return command;
    }

    /// <summary>
    /// An image file's locks (QEMU's, which XenDisk takes too) belong to the open file description of
    /// the process holding them and end with it: they are shown, never broken.
    /// </summary>
    private static int UnlockFile(ParseResult parse, string path, bool force)
    {
        if (!ImageFiles.TryResolveFormat(parse, path, null, out _, out int exitCode))
        {
            return exitCode;
        }
        if (force)
        {
            OverlayOperationResult broken = OverlayFormat.BreakLock(path);
            if (!broken.Succeeded)
            {
                return CommandErrors.Failed(parse, broken.Error!);
            }
            parse.Out().WriteLine($"{path}: not locked; nothing to break");
            return 0;
        }
        parse.Out().WriteLine(OverlayFormat.LockHolder(path, forWriting: true) is { } holder ? $"{path}: {holder}" : $"{path}: not locked");
        return 0;
    }
}
