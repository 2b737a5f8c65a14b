using XenDisk.Cow.Policies;
using XenDisk.Cow.Qcow2;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2.Support;

public static class TestData
{
    public static byte[] Random(int length, int seed)
    {
        byte[] data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    /// <summary>A read-only memory base filled with seeded random bytes.</summary>
    public static MemoryBlockDevice Base(byte[] contents)
    {
        MemoryBlockDevice device = new(contents.Length);
        contents.CopyTo(device.Contents);
        return device;
    }

    public static GrowableMemoryDevice NewOverlay(long virtualSize, int clusterSize, bool? extendedL2, bool withBacking)
    {
        GrowableMemoryDevice overlay = new();
        Qcow2Image.Create(overlay, new Qcow2CreateOptions
        {
            VirtualSize = virtualSize,
            ClusterSize = clusterSize,
            ExtendedL2 = extendedL2,
            BackingFile = withBacking ? "base.raw" : null,
            BackingFormat = withBacking ? "raw" : null,
        });
        return overlay;
    }

    public static Qcow2Image Open(IBlockDevice overlay, IBlockDevice? backing, MetadataPolicy policy = MetadataPolicy.Flush, bool readOnly = false, long l2CacheBytes = 0)
        => Qcow2Image.Open(overlay, backing, new Qcow2OpenOptions { Policy = policy, OwnsDevices = false, ReadOnly = readOnly, L2CacheBytes = l2CacheBytes });

    public static byte[] ReadAll(IBlockDevice device)
    {
        byte[] data = new byte[device.Info.SizeBytes];
        Assert.Equal(IoStatus.Ok, device.ReadAt(0, data));
        return data;
    }
}
