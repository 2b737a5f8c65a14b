using System.Globalization;
using XenDisk.Cow.Overlays;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>Creating a qcow2 image with qemu-img create's -o options.</summary>
internal sealed partial class Qcow2OverlayFormat
{
    private const string CreateKeys = "cluster_size, extended_l2, lazy_refcounts, refcount_bits, policy";

    /// <summary>A base's format is recorded, never probed (a guest-written raw base could otherwise pose as qcow2).</summary>
    public override string? BaseRefusal(bool hasBase, string? baseFormat) => hasBase && baseFormat == null
        ? "-b needs the base's format too (-F raw or -F qcow2): XenDisk never probes a base's format"
        : null;

    public override OverlayOperationResult Create(string imagePath, OverlayCreateOptions options)
    {
        int clusterSize = DefaultClusterSize;
        bool? extendedL2 = null;
        bool lazyRefcounts = false;
        int refcountOrder = Qcow2Format.DefaultRefcountOrder;
        foreach ((string key, string value) in options.Settings)
        {
            switch (key)
            {
                case "cluster_size":
                    if (options.ParseSize(value) is not long cluster || cluster is < 512 or > 2 * 1024 * 1024 || !long.IsPow2(cluster))
                    {
                        return OverlayOperationResult.Invalid($"cluster_size={value}: a power of two from 512 to 2M is needed");
                    }
                    clusterSize = (int)cluster;
                    break;
                case "extended_l2":
                    if (!TryParseOnOff(value, out bool on))
                    {
                        return OverlayOperationResult.Invalid($"extended_l2={value}: use on or off");
                    }
                    extendedL2 = on;
                    break;
                case "lazy_refcounts":
                    if (!TryParseOnOff(value, out lazyRefcounts))
                    {
                        return OverlayOperationResult.Invalid($"lazy_refcounts={value}: use on or off");
                    }
                    break;
                case "refcount_bits":
                    if (!int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out int bits) || bits is < 1 or > 64 || !int.IsPow2(bits))
                    {
                        return OverlayOperationResult.Invalid($"refcount_bits={value}: a power of two from 1 to 64 is needed");
                    }
                    refcountOrder = int.Log2(bits);
                    break;
                case "policy":
                    switch (value)
                    {
                        case "lazy":
                            lazyRefcounts = true;
                            break;
                        case "flush" or "sync":
                            // Chosen when the disk is opened (the target's policy=); nothing in the image records them.
                            break;
                        case "transient":
                            return OverlayOperationResult.Invalid("policy=transient overlays are made and thrown away by the backend when a disk opens (cow:BASE,OVERLAY,policy=transient); there is nothing to create");
                        default:
                            return OverlayOperationResult.Invalid($"policy={value} is not a metadata policy (sync, flush, lazy or transient)");
                    }
                    break;
                default:
                    return OverlayOperationResult.Invalid($"unknown qcow2 option '{key}' (known: {CreateKeys})");
            }
        }
        bool hasBase = !string.IsNullOrEmpty(options.BaseName);
        try
        {
            Qcow2Disk.Create(imagePath, new Qcow2CreateOptions
            {
                VirtualSize = options.VirtualSize,
                ClusterSize = clusterSize,
                ExtendedL2 = extendedL2,
                BackingFile = hasBase ? options.BaseName : null,
                BackingFormat = hasBase ? options.BaseFormat : null,
                RefcountOrder = refcountOrder,
                LazyRefcounts = lazyRefcounts,
            });
        }
        catch (ArgumentException e)
        {
            return OverlayOperationResult.Invalid($"cannot create '{imagePath}': {e.Message}");
        }
        return new OverlayOperationResult { Status = IoStatus.Ok };
    }

    private static bool TryParseOnOff(string value, out bool on)
    {
        on = value is "on" or "true" or "yes";
        return on || value is "off" or "false" or "no";
    }
}
