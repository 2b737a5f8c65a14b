using System.Buffers.Binary;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2;

public class CheckerTests
{
    private static (GrowableMemoryDevice Overlay, byte[] Data) ImageWithData()
    {
        GrowableMemoryDevice overlay = TestData.NewOverlay(4 << 20, 65536, false, withBacking: false);
        byte[] data = TestData.Random(256 * 1024, 40);
        using Qcow2Image image = TestData.Open(overlay, null);
        Assert.Equal(IoStatus.Ok, image.WriteAt(0, data));
        Assert.Equal(IoStatus.Ok, image.Close());
        return (overlay, data);
    }

    [Fact]
    public void Leaked_clusters_are_reported_and_repaired()
    {
        (GrowableMemoryDevice overlay, byte[] data) = ImageWithData();
        Qcow2Header header = Qcow2Disk.ReadHeader(overlay);
        byte[] bytes = overlay.ToArray();
        long blockOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan((int)header.RefcountTableOffset));
        long fileClusters = bytes.Length / 65536;
        // Two clusters at the end of the file counted but referenced by nothing: leaks.
        Array.Resize(ref bytes, bytes.Length + 2 * 65536);
        BinaryPrimitives.WriteUInt16BigEndian(bytes.AsSpan((int)(blockOffset + fileClusters * 2)), 1);
        BinaryPrimitives.WriteUInt16BigEndian(bytes.AsSpan((int)(blockOffset + (fileClusters + 1) * 2)), 1);
        GrowableMemoryDevice leaky = new(bytes);

        Qcow2CheckReport report = Qcow2Checker.Check(leaky);
        Assert.Equal(2, report.Leaks);
        Assert.Equal(0, report.Corruptions);

        Qcow2CheckReport repaired = Qcow2Checker.Check(leaky, repair: true);
        Assert.True(repaired.IsClean, string.Join("\n", repaired.Messages));
        Assert.Equal(2, repaired.LeaksFixed);
        using Qcow2Image image = TestData.Open(leaky, null);
        Assert.Equal(data, TestData.ReadAll(image).AsSpan(0, data.Length).ToArray());
    }

    [Fact]
    public void Wrong_copied_bits_and_missing_refcounts_are_corruptions_that_repair_fixes()
    {
        (GrowableMemoryDevice overlay, byte[] data) = ImageWithData();
        Qcow2Header header = Qcow2Disk.ReadHeader(overlay);
        byte[] bytes = overlay.ToArray();
        long l2 = (long)(BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan((int)header.L1TableOffset)) & 0x00FF_FFFF_FFFF_FE00UL);
        ulong entry = BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan((int)l2));
        BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan((int)l2), entry & ~(1UL << 63)); // clear COPIED
        long blockOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan((int)header.RefcountTableOffset));
        long dataCluster = (long)(BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan((int)l2 + 8)) & 0x00FF_FFFF_FFFF_FE00UL) / 65536;
        BinaryPrimitives.WriteUInt16BigEndian(bytes.AsSpan((int)(blockOffset + dataCluster * 2)), 0); // refcount 0 for a used cluster
        GrowableMemoryDevice damaged = new(bytes);

        Qcow2CheckReport report = Qcow2Checker.Check(damaged);
        // Three: the cleared COPIED bit, the missing refcount, and the COPIED bit that a refcount of 0 now contradicts.
        Assert.Equal(3, report.Corruptions);
        Assert.Contains(report.Messages, m => m.Contains("OFLAG_COPIED"));
        Assert.Contains(report.Messages, m => m.Contains($"cluster {dataCluster} refcount=0 reference=1"));

        Qcow2CheckReport repaired = Qcow2Checker.Check(damaged, repair: true);
        Assert.True(repaired.IsClean, string.Join("\n", repaired.Messages));
        Assert.Equal(3, repaired.CorruptionsFixed);
        using Qcow2Image image = TestData.Open(damaged, null);
        Assert.Equal(data, TestData.ReadAll(image).AsSpan(0, data.Length).ToArray());
    }

    [Fact]
    public void Refused_header_is_reported_as_corruption()
    {
        Qcow2CheckReport report = Qcow2Checker.Check(new GrowableMemoryDevice(new byte[4096]));
        Assert.Equal(1, report.Corruptions);
        Assert.Contains("bad magic", report.Messages[0]);
    }
}
