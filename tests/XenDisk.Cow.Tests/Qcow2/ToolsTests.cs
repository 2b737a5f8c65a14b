using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2;

public class ToolsTests
{
    [Fact]
    public void Info_describes_the_image()
    {
        GrowableMemoryDevice overlay = TestData.NewOverlay(8 << 20, 65536, null, withBacking: true);
        using (MemoryBlockDevice backing = new(8 << 20))
        using (Qcow2Image image = TestData.Open(overlay, backing))
        {
            Assert.Equal(IoStatus.Ok, image.WriteAt(0, new byte[3 * 65536]));
        }
        Qcow2Info info = Qcow2Image.Describe(overlay);
        Assert.Equal(8 << 20, info.VirtualSize);
        Assert.Equal(65536, info.ClusterSize);
        Assert.Equal(3, info.Version);
        Assert.Equal("base.raw", info.BackingFile);
        Assert.Equal("raw", info.BackingFormat);
        Assert.True(info.ExtendedL2);
        Assert.Contains("extended_l2", info.Features);
        Assert.Equal(16, info.RefcountBits);
        Assert.Equal(3 * 65536, info.AllocatedBytes);
    }

    [Fact]
    public void Map_reports_data_zero_and_backing_extents()
    {
        GrowableMemoryDevice overlay = TestData.NewOverlay(4 << 20, 65536, true, withBacking: true);
        using MemoryBlockDevice backing = new(4 << 20);
        using Qcow2Image image = TestData.Open(overlay, backing);
        Assert.Equal(IoStatus.Ok, image.WriteAt(65536, new byte[65536 + 4096]));
        Assert.Equal(IoStatus.Ok, image.Discard(1 << 20, 8192, false));
        long reported = 0;
        IReadOnlyList<Qcow2Extent> map = image.Map((done, total) => reported = done);
        Assert.Equal(4 << 20, reported);
        Assert.Equal(4 << 20, map.Sum(e => e.Length));
        Assert.Equal(new Qcow2Extent(0, 65536, Qcow2ExtentKind.Backing, 0), map[0]);
        Assert.Equal(Qcow2ExtentKind.Data, map[1].Kind);
        Assert.Equal(65536, map[1].Offset);
        Assert.Equal(65536, map[1].Length); // the second cluster's data lives in another host cluster
        Assert.Equal(Qcow2ExtentKind.Data, map[2].Kind);
        Assert.Equal(4096, map[2].Length);
        Assert.Contains(new Qcow2Extent(1 << 20, 8192, Qcow2ExtentKind.Zero, 0), map);
    }
}
