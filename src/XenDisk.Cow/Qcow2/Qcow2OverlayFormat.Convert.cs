using XenDisk.Cow.Overlays;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>qcow2 as a conversion's target: plain or compressed clusters (deflate, or zstd with compression_type=zstd).</summary>
internal sealed partial class Qcow2OverlayFormat
{
    public override OverlayOperationResult? RefusesConversionTarget(OverlayConversionOptions options)
    {
        foreach (string item in options.Settings)
        {
            if (CompressionType(item) < 0)
            {
                return OverlayOperationResult.Invalid($"unsupported target option '{item}' (-O qcow2 takes compression_type=zlib|zstd)");
            }
        }
        return null;
    }

    public override OverlayConversionTarget CreateConversionTarget(string imagePath, long virtualSize, OverlayConversionOptions options)
    {
        if (RefusesConversionTarget(options) is { } refusal)
        {
            throw new ArgumentException(refusal.Error);
        }
        if (virtualSize % 512 != 0)
        {
            throw new StorageException($"the source's size ({virtualSize} bytes) is not a multiple of 512, which a qcow2 virtual disk must be");
        }
        int compressionType = Qcow2CreateOptions.CompressionZlib;
        foreach (string item in options.Settings)
        {
            compressionType = CompressionType(item);
        }
        Qcow2Disk.Create(imagePath, new Qcow2CreateOptions { VirtualSize = virtualSize, CompressionType = compressionType }, overwrite: true);
        return new ConversionTarget(Qcow2Disk.Open(imagePath));
    }

    private static int CompressionType(string item) => item switch
    {
        "compression_type=zlib" => Qcow2CreateOptions.CompressionZlib,
        "compression_type=zstd" => Qcow2CreateOptions.CompressionZstd,
        _ => -1,
    };

    private sealed class ConversionTarget(Qcow2Image image) : OverlayConversionTarget
    {
        public override IBlockDevice Device => image;

        public override int CompressionUnit => image.ClusterSize;

        public override IoStatus WriteCompressed(long offset, ReadOnlySpan<byte> data, out string? error)
        {
            IoStatus status = image.WriteCompressed(offset, data);
            error = status == IoStatus.Ok ? null : image.LastError ?? status.Describe();
            return status;
        }

        public override IoStatus Finish() => image.Close();

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                image.Dispose();
            }
        }
    }
}
