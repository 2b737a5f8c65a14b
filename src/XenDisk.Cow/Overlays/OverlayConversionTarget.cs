using XenDisk.Storage;

namespace XenDisk.Cow.Overlays;

/// <summary>
/// A new, standalone image of an overlay format that a conversion (qemu-img convert -O FORMAT) writes
/// the source's virtual disk into: <see cref="Device"/> for plain writes, <see cref="WriteCompressed"/>
/// for a compressed unit where the format has compression (qemu-img convert -c), and <see cref="Finish"/>
/// to close it cleanly. Ownership: the target owns its image; <see cref="IDisposable.Dispose"/> releases it.
/// </summary>
public abstract class OverlayConversionTarget : IDisposable
{
    /// <summary>The image, for plain writes of the source's non-zero data.</summary>
    public abstract IBlockDevice Device { get; }

    /// <summary>The unit compressed writes take (a whole cluster); each unit is compressed by itself.</summary>
    public abstract int CompressionUnit { get; }

    /// <summary>Writes one <see cref="CompressionUnit"/> (or the disk's last, shorter one) compressed. Returns the failure with its reason.</summary>
    public abstract IoStatus WriteCompressed(long offset, ReadOnlySpan<byte> data, out string? error);

    /// <summary>Writes all metadata back, flushes and closes the image cleanly.</summary>
    public abstract IoStatus Finish();

    public void Dispose()
    {
        Dispose(disposing: true);
        GC.SuppressFinalize(this);
    }

    protected abstract void Dispose(bool disposing);
}

/// <summary>How <see cref="OverlayFormat.CreateConversionTarget"/> makes the target.</summary>
public sealed record OverlayConversionOptions
{
    /// <summary>The source's data is written compressed (qemu-img convert -c).</summary>
    public bool Compressed { get; init; }

    /// <summary>The target's options (qemu-img convert -o key=value), validated by the format.</summary>
    public IReadOnlyList<string> Settings { get; init; } = [];
}
