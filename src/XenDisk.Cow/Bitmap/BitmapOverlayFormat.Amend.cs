using XenDisk.Cow.Overlays;

namespace XenDisk.Cow.Bitmap;

/// <summary>
/// A bitmap overlay has one version and no options to amend, and it is never another image's base:
/// it is read only through its own base (docs/BITMAP-FORMAT.md).
/// </summary>
internal sealed partial class BitmapOverlayFormat
{
    public override bool CanBeBase => false;

    public override OverlayOperationResult Amend(string imagePath, IReadOnlyList<string> settings, OverlayFileOptions? files = null) =>
        Refuses(OverlayFileOperation.Amend, imagePath)!;

    /// <summary>A bitmap overlay's own grain map is its only bitmap; it holds no persistent dirty bitmaps.</summary>
    public override OverlayOperationResult EditBitmaps(string imagePath, OverlayBitmapEdit edit, OverlayFileOptions? files = null) =>
        Refuses(OverlayFileOperation.Bitmaps, imagePath)!;
}
