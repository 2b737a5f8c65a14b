using XenDisk.Cow.Overlays;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>qemu-img amend for qcow2: the version (compat 0.10 or 1.1) and lazy refcounts.</summary>
internal sealed partial class Qcow2OverlayFormat
{
    public override bool CanBeBase => true;

    public override OverlayOperationResult Amend(string imagePath, IReadOnlyList<string> settings, OverlayFileOptions? files = null)
    {
        files ??= new OverlayFileOptions();
        int? version = null;
        bool? lazy = null;
        foreach (string item in settings)
        {
            string[] pair = item.Split('=', 2);
            string value = pair.Length == 2 ? pair[1] : "";
            switch (pair[0])
            {
                case "compat":
                    version = value switch { "0.10" or "v2" => 2, "1.1" or "v3" => 3, _ => 0 };
                    if (version == 0)
                    {
                        return OverlayOperationResult.Invalid($"Invalid compatibility level: '{value}' (0.10 or 1.1)");
                    }
                    break;
                case "lazy_refcounts":
                    lazy = value switch { "on" => true, "off" => false, _ => null };
                    if (lazy == null)
                    {
                        return OverlayOperationResult.Invalid($"lazy_refcounts is on or off, not '{value}'");
                    }
                    break;
                default:
                    return OverlayOperationResult.Invalid($"amending '{pair[0]}' is not supported (compat and lazy_refcounts are)");
            }
        }
        string fullPath = Path.GetFullPath(imagePath);
        int current;
        using (FileImageDevice device = FileImageDevice.Open(fullPath, readOnly: true))
        {
            current = Qcow2Disk.ReadHeader(device).Version;
        }
        int target = version ?? current;
        if (lazy == true && target < 3)
        {
            return OverlayOperationResult.Unsupported("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)");
        }
        if (current < 3)
        {
            if (target >= 3)
            {
                using FileImageDevice device = FileImageDevice.Open(fullPath, readOnly: false);
                Qcow2Image.UpgradeToVersion3(device, lazy == true);
            }
            return new OverlayOperationResult { Status = IoStatus.Ok };
        }
        using Qcow2Image qcow2 = Qcow2Disk.Open(fullPath, new Qcow2OpenOptions { BackingPolicy = files.BackingPolicy });
        IoStatus status = IoStatus.Ok;
        if (lazy is bool on)
        {
            status = qcow2.SetLazyRefcounts(on);
        }
        if (status == IoStatus.Ok && target < 3)
        {
            status = qcow2.DowngradeToVersion2();
        }
        if (status == IoStatus.Ok)
        {
            status = qcow2.Close();
        }
        return status == IoStatus.Ok
            ? new OverlayOperationResult { Status = IoStatus.Ok }
            : OverlayOperationResult.Failed(status, $"amending '{imagePath}' failed: {qcow2.LastError ?? status.Describe()}");
    }
}
