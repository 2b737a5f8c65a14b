using XenDisk.Cow.Overlays;
using XenDisk.Service.Configuration;
using XenDisk.Storage;
using XenDisk.Storage.Iscsi;

namespace XenDisk.Cli.Commands.Image;

/// <summary>
/// iSCSI LUNs (iscsi://HOST[:PORT]/IQN/LUN) where the tools take an image path. They are reached with
/// the service configuration's Iscsi section (initiator name, CHAP credentials); never with credentials
/// from the command line. A tool that writes a LUN reserves it under a key of its own for as long as it
/// runs, so it is refused a LUN a service holds and no service can take one it is writing.
/// </summary>
internal static class ImageLuns
{
    public static bool IsLun(string path) => IscsiUrl.IsIscsi(path);

    /// <summary>The options for this invocation: the configured initiator and credentials, a one-off reservation key.</summary>
    public static IscsiOptions Options()
    {
        IscsiSettings settings = IscsiSettings.ReadServiceConfiguration();
        settings.Enabled = true;
        IscsiOptions options = settings.ToOptions()!;
        return options with { ReservationKey = (ulong)Random.Shared.NextInt64(1, long.MaxValue) };
    }

    /// <summary>The service's own reservation key when one is configured (unlock uses it), else a one-off key.</summary>
    public static IscsiOptions HostOptions()
    {
        IscsiSettings settings = IscsiSettings.ReadServiceConfiguration();
        settings.Enabled = true;
        IscsiOptions options = settings.ToOptions()!;
        return options.ReservationKey != 0 ? options : options with { ReservationKey = (ulong)Random.Shared.NextInt64(1, long.MaxValue) };
    }

    /// <summary>The format a LUN holds, from its first bytes: an overlay format that lives on LUNs, or raw.</summary>
    public static ImageFormat Probe(string url)
    {
        using IscsiBlockDevice device = IscsiBlockDevice.Open(IscsiUrl.Parse(url), readOnly: true, Options());
        byte[] magic = new byte[device.Info.LogicalSectorSize];
        if (device.ReadAt(0, magic) != IoStatus.Ok)
        {
            throw new StorageException($"{url}: cannot read its first block.");
        }
        // Only the formats that live on LUNs are recognised; any other content is a raw disk.
        return OverlayFormat.Recognise(magic) is { LunRefusal: null } overlay && ImageFormats.TryParse(overlay.Name, out ImageFormat format) ? format : ImageFormat.Raw;
    }
}
