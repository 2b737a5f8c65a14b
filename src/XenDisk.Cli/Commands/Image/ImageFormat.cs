using XenDisk.Cow.Overlays;

namespace XenDisk.Cli.Commands.Image;

/// <summary>The image formats the command line reads and writes.</summary>
internal enum ImageFormat
{
    Raw,
    Qcow2,
    Bitmap,
}

/// <summary>
/// Names and recognition of image formats. A format is either given (-f) or read from the file's
/// magic, as the overlay formats recognise it (<see cref="OverlayFormat.Recognise"/>); anything else
/// is raw. Only the image the operator names is probed this way: backing files are opened in the
/// format their image records, never probed (a guest-written raw base could otherwise pose as qcow2).
/// </summary>
internal static class ImageFormats
{
    public const string Names = "raw, qcow2 or bitmap";

    public static string Name(ImageFormat format) => format switch
    {
        ImageFormat.Qcow2 => "qcow2",
        ImageFormat.Bitmap => "bitmap",
        _ => "raw",
    };

    /// <summary>The overlay format of <paramref name="format"/>, or null for raw (which has no overlay metadata).</summary>
    public static OverlayFormat? Overlay(ImageFormat format) => OverlayFormat.Find(Name(format));

    public static bool TryParse(string? name, out ImageFormat format)
    {
        switch (name?.ToLowerInvariant())
        {
            case "raw":
                format = ImageFormat.Raw;
                return true;
            case "qcow2":
                format = ImageFormat.Qcow2;
                return true;
            case "bitmap":
                format = ImageFormat.Bitmap;
                return true;
            default:
                format = ImageFormat.Raw;
                return false;
        }
    }

    /// <summary>Reads the first bytes of <paramref name="path"/>. Throws IOException/UnauthorizedAccessException when it cannot be read.</summary>
    public static ImageFormat Probe(string path)
    {
        Span<byte> magic = stackalloc byte[OverlayFormat.MagicLength];
        using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        int read = RandomAccess.Read(handle, magic, 0);
        return OverlayFormat.Recognise(magic[..read]) is { } overlay && TryParse(overlay.Name, out ImageFormat format) ? format : ImageFormat.Raw;
    }
}
