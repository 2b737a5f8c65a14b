using XenDisk.Cow.Overlays;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Bitmap;

/// <summary>Creating a bitmap overlay over its raw base, with the -o options grain= and preallocation=.</summary>
internal sealed partial class BitmapOverlayFormat
{
    private const string CreateKeys = "grain, preallocation";

    /// <summary>The overlay tracks one raw base grain for grain (docs/BITMAP-FORMAT.md), so it cannot be made without one.</summary>
    public override string? BaseRefusal(bool hasBase, string? baseFormat) =>
        !hasBase ? "a bitmap overlay needs its base: give -b BASE"
        : baseFormat == "qcow2" ? "a bitmap overlay's base must be raw (-F raw)"
        : null;

    public override OverlayOperationResult Create(string imagePath, OverlayCreateOptions options)
    {
        if (options.BasePath == null)
        {
            return OverlayOperationResult.Invalid(BaseRefusal(hasBase: false, null)!);
        }
        int grainSize = BitmapFormat.DefaultGrainSize;
        FilePreallocation preallocation = FilePreallocation.Falloc;
        foreach ((string key, string value) in options.Settings)
        {
            if (key == "preallocation")
            {
                switch (value)
                {
                    case "off": preallocation = FilePreallocation.Off; break;
                    case "falloc": preallocation = FilePreallocation.Falloc; break;
                    case "full": preallocation = FilePreallocation.Full; break;
                    default:
                        return OverlayOperationResult.Invalid($"preallocation={value}: off (sparse), falloc (the default: blocks allocated, nothing written) or full (zeros written: every write is then an overwrite in place)");
                }
                continue;
            }
            if (key != "grain")
            {
                return OverlayOperationResult.Invalid(key == "policy"
                    ? "a bitmap overlay records no policy; choose it when the disk is opened (the target's policy=)"
                    : $"unknown bitmap option '{key}' (known: {CreateKeys})");
            }
            if (options.ParseSize(value) is not long grain || grain < BitmapFormat.MinimumGrainSize || grain > BitmapFormat.MaximumGrainSize || !long.IsPow2(grain))
            {
                return OverlayOperationResult.Invalid($"grain={value}: a power of two from 512 to 64k is needed");
            }
            grainSize = (int)grain;
        }
        // A LUN is made on its target: the overlay is written onto it as it is.
        bool lun = OverlayAttachment.IsLun(imagePath);
        if (lun && options.Settings.ContainsKey("preallocation"))
        {
            return OverlayOperationResult.Invalid("preallocation= applies to overlay files; a LUN's blocks are its target's to allocate");
        }
        if (!lun)
        {
            OverlayFiles.CreateBitmapFile(imagePath, BitmapOverlay.RequiredCowSize(options.VirtualSize, grainSize), preallocation);
        }
        try
        {
            IBlockDevice baseDevice = options.OpenStorage(options.BasePath, true);
            IBlockDevice? cow = null;
            try
            {
                // On a LUN, BitmapOverlay.Create refuses one smaller than the overlay needs, naming both sizes,
                // and zeroes the map before it writes the header: whatever the LUN held is no longer read.
                cow = options.OpenStorage(imagePath, false);
                // The base is recorded by its full path: a bitmap overlay names it absolutely (docs/BITMAP-FORMAT.md).
                BitmapOverlay.Create(cow, baseDevice, new BitmapCreateOptions { GrainSize = grainSize, VirtualSize = options.VirtualSize, BaseName = options.BasePath },
                    new BitmapOverlayOptions { OwnsDevices = true }).Dispose();
            }
            catch
            {
                cow?.Dispose();
                baseDevice.Dispose();
                throw;
            }
        }
        catch when (!lun)
        {
            File.Delete(imagePath);
            throw;
        }
        return new OverlayOperationResult { Status = IoStatus.Ok };
    }
}
