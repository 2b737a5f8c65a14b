using System.Globalization;

namespace XenDisk.Service.Control;

/// <summary>
/// How a control client names a device, the ways `xendisk status` shows it: its backend path
/// (<c>/local/domain/0/backend/vbd/2/51712</c>), or <c>DOMID/DEVICE</c> where DEVICE is the numeric
/// device id (<c>2/51712</c>) or the toolstack's vdev name (<c>2/xvda</c>), turned into the number
/// the way libxl does (libxl_device.c, libxl__device_disk_dev_number).
/// </summary>
public sealed record DeviceSelector
{
    /// <summary>libxl: xvd disks 0-15 with partitions 0-15 use the compact Linux encoding under major 202.</summary>
    private const int XvdMajor = 202;

    /// <summary>libxl: every other xvd disk (up to 2^20 - 1, partitions up to 255) uses the extended encoding.</summary>
    private const int ExtendedFlag = 1 << 28;

    private const int MaxExtendedDisk = (1 << 20) - 1;

    /// <summary>xenstore's limit on a path (XENSTORE_ABS_PATH_MAX in xs_wire.h).</summary>
    private const int MaxPathLength = 3072;

    private DeviceSelector(string? backendPath, uint domainId, int deviceId)
    {
        BackendPath = backendPath;
        DomainId = domainId;
        DeviceId = deviceId;
    }

    /// <summary>The backend path, when the device was named by it; otherwise null and the ids apply.</summary>
    public string? BackendPath { get; }

    public uint DomainId { get; }

    public int DeviceId { get; }

    public override string ToString() => BackendPath ?? string.Create(CultureInfo.InvariantCulture, $"{DomainId}/{DeviceId}");

    /// <summary>The backend path of the device this names among those <paramref name="backend"/> serves, or null.</summary>
    public string? FindIn(XenDisk.Backend.ControlPlane.BlockBackend backend) => BackendPath is { } path
        ? backend.Devices.FirstOrDefault(d => d.BackendPath == path)?.BackendPath
        : backend.FindDevice(DomainId, DeviceId)?.BackendPath;

    /// <summary>Parses a device name; on failure <paramref name="error"/> says what is accepted.</summary>
    public static bool TryParse(string? text, out DeviceSelector? selector, out string? error)
    {
        selector = null;
        error = null;
        if (string.IsNullOrWhiteSpace(text))
        {
            error = "No device named; give DOMID/DEVICE (e.g. 3/51712 or 3/xvda) or the backend path that xendisk status shows.";
            return false;
        }

        if (text.StartsWith('/'))
        {
            string path = text.TrimEnd('/');
            if (path.Length == 0 || path.Length > MaxPathLength || path.Any(char.IsControl))
            {
                error = "The backend path is not a xenstore path.";
                return false;
            }

            selector = new DeviceSelector(path, 0, 0);
            return true;
        }

        int slash = text.IndexOf('/', StringComparison.Ordinal);
        if (slash <= 0
            || !uint.TryParse(text.AsSpan(0, slash), NumberStyles.None, CultureInfo.InvariantCulture, out uint domainId)
            || !TryParseDeviceId(text[(slash + 1)..], out int deviceId))
        {
            error = $"\"{Printable(text)}\" names no device; give DOMID/DEVICE (e.g. 3/51712 or 3/xvda) or the backend path that xendisk status shows.";
            return false;
        }

        selector = new DeviceSelector(null, domainId, deviceId);
        return true;
    }

    /// <summary>A numeric device id, or an xvd/hd/sd vdev name with an optional partition number.</summary>
    internal static bool TryParseDeviceId(string text, out int deviceId)
    {
        deviceId = 0;
        if (int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out deviceId))
        {
            return true;
        }

        if (TryParseVdev(text, "xvd", MaxExtendedDisk, 255, out int disk, out int partition))
        {
            deviceId = disk <= 15 && partition <= 15
                ? (XvdMajor << 8) | (disk << 4) | partition
                : ExtendedFlag | (disk << 8) | partition;
            return true;
        }

        if (TryParseVdev(text, "hd", 3, 63, out disk, out partition))
        {
            // IDE: majors 3 (hda, hdb) and 22 (hdc, hdd), 64 minors per disk.
            deviceId = ((disk < 2 ? 3 : 22) << 8) | ((disk & 1) << 6) | partition;
            return true;
        }

        if (TryParseVdev(text, "sd", 15, 15, out disk, out partition))
        {
            // SCSI: major 8, 16 minors per disk.
            deviceId = (8 << 8) | (disk << 4) | partition;
            return true;
        }

        return false;
    }

    /// <summary>PREFIX, letters (a = 0, z = 25, aa = 26: bijective base 26), then an optional partition number.</summary>
    private static bool TryParseVdev(string text, string prefix, int maxDisk, int maxPartition, out int disk, out int partition)
    {
        disk = 0;
        partition = 0;
        if (!text.StartsWith(prefix, StringComparison.Ordinal))
        {
            return false;
        }

        int at = prefix.Length;
        long index = 0;
        while (at < text.Length && text[at] is >= 'a' and <= 'z')
        {
            index = (index * 26) + (text[at] - 'a' + 1);
            if (index - 1 > maxDisk)
            {
                return false;
            }

            at++;
        }

        if (at == prefix.Length)
        {
            return false;
        }

        disk = (int)(index - 1);
        if (at == text.Length)
        {
            return true;
        }

        return int.TryParse(text.AsSpan(at), NumberStyles.None, CultureInfo.InvariantCulture, out partition)
            && partition <= maxPartition
            && text[at] != '0';
    }

    private static string Printable(string text) =>
        text.Length > 80 || text.Any(char.IsControl) ? "(the device name)" : text;
}
