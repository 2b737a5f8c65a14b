using XenDisk.Cow.Bitmap;

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
/// magic: "QFI\xfb" (qcow2 spec, == Header ==, magic) or "XDBITMAP" (docs/BITMAP-FORMAT.md); anything
/// else is raw. Only the image the operator names is probed this way: backing files are opened in the
/// format their image records, never probed (a guest-written raw base could otherwise pose as qcow2).
/// </summary>
internal static class ImageFormats
{
    private static ReadOnlySpan<byte> Qcow2Magic => [(byte)'Q', (byte)'F', (byte)'I', 0xfb];

    public const string Names = "raw, qcow2 or bitmap";

    public static string Name(ImageFormat format) => format switch
    {
        ImageFormat.Qcow2 => "qcow2",
        ImageFormat.Bitmap => "bitmap",
        _ => "raw",
    };

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
        Span<byte> magic = stackalloc byte[8];
        using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        int read = RandomAccess.Read(handle, magic, 0);
        if (read >= 4 && magic[..4].SequenceEqual(Qcow2Magic))
        {
            return ImageFormat.Qcow2;
        }
        if (read == 8 && magic.SequenceEqual(BitmapFormat.Magic))
        {
            return ImageFormat.Bitmap;
        }
        return ImageFormat.Raw;
    }
}
