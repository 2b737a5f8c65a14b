using XenDisk.Cow.Overlays;

namespace XenDisk.Cow.Bitmap;

/// <summary>A bitmap overlay records changes over a base, so it is never a conversion's target.</summary>
internal sealed partial class BitmapOverlayFormat
{
    public override OverlayOperationResult? RefusesConversionTarget(OverlayConversionOptions options) =>
        OverlayOperationResult.Unsupported("a bitmap overlay records changes over a base and cannot be a conversion's target; use -O raw or -O qcow2");

    public override OverlayConversionTarget CreateConversionTarget(string imagePath, long virtualSize, OverlayConversionOptions options) =>
        throw new InvalidOperationException(RefusesConversionTarget(options)!.Error);
}
