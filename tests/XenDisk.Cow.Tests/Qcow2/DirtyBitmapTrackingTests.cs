using System.Text.Json;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Storage;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2;

/// <summary>
/// Persistent dirty bitmaps kept up to date by the engine: bitmaps made by qemu-img, writes through
/// XenDisk, and QEMU reading back which granules are dirty (docs/interop/qcow2.txt == Bitmaps ==).
/// </summary>
[Trait(Needs.Key, Needs.Qemu)]
public class DirtyBitmapTrackingTests
{
    private const long MiB = 1 << 20;

    private static string ImageWithBitmaps(TempDirectory directory)
    {
        string image = directory.File("tracked.qcow2");
        QemuTools.RunOk(QemuTools.QemuImg, "create", "-q", "-f", "qcow2", image, "64M");
        QemuTools.RunOk(QemuTools.QemuImg, "bitmap", "--add", image, "coarse");
        QemuTools.RunOk(QemuTools.QemuImg, "bitmap", "--add", "-g", "4096", image, "fine");
        QemuTools.RunOk(QemuTools.QemuImg, "bitmap", "--add", "--disable", image, "frozen");
        QemuTools.RunOk(QemuTools.QemuIo, "-f", "qcow2", "-c", "write -P 0x11 1M 64k", image);
        return image;
    }

    [Fact]
    public void Writes_and_discards_are_dirty_in_enabled_bitmaps_as_qemu_reads_them()
    {
        using TempDirectory directory = new();
        string image = ImageWithBitmaps(directory);
        using (Qcow2Image opened = Qcow2Disk.Open(image, new Qcow2OpenOptions()))
        {
            Assert.Equal(IoStatus.Ok, opened.WriteAt(4 * MiB, TestData.Random(65536, 1)));
            Assert.Equal(IoStatus.Ok, opened.WriteAt(20 * MiB + 512, TestData.Random(4096, 2))); // two 4 KiB granules, one 64 KiB granule
            Assert.Equal(IoStatus.Ok, opened.Discard(30 * MiB, 128 * 1024, secure: false));
            Assert.Equal(IoStatus.Ok, opened.WriteAt(64 * MiB - 4096, TestData.Random(4096, 3))); // the last granule
            Assert.Equal(IoStatus.Ok, opened.Flush());

            // While open, the file marks the bitmaps in use (a crash now leaves them inconsistent, not stale).
            Assert.Contains("in-use", BitmapFlags(image, "coarse"));
            Assert.Equal(IoStatus.Ok, opened.Close());
        }

        QemuTools.RunOk(QemuTools.QemuImg, "check", image);
        Assert.DoesNotContain("in-use", BitmapFlags(image, "coarse"));
        Assert.Contains("auto", BitmapFlags(image, "coarse"));
        Assert.DoesNotContain("auto", BitmapFlags(image, "frozen"));
        Assert.Equal(
            [(1 * MiB, 65536), (4 * MiB, 65536), (20 * MiB, 65536), (30 * MiB, 131072), (64 * MiB - 65536, 65536)],
            QemuTools.DirtyRanges(image, "coarse"));
        Assert.Equal(
            [(1 * MiB, 65536), (4 * MiB, 65536), (20 * MiB, 8192), (30 * MiB, 131072), (64 * MiB - 4096, 4096)],
            QemuTools.DirtyRanges(image, "fine"));
        Assert.Empty(QemuTools.DirtyRanges(image, "frozen"));

        // The engine's own reader agrees with QEMU.
        using FileImageDevice file = FileImageDevice.Open(image, readOnly: true);
        Qcow2Header header = Qcow2Disk.ReadHeader(file);
        IReadOnlyList<PersistentBitmap> bitmaps = Qcow2Image.ReadBitmaps(file, header);
        Assert.Equal(["coarse", "fine", "frozen"], bitmaps.Select(b => b.Name));
        Assert.Equal(QemuTools.DirtyRanges(image, "fine"), bitmaps[1].DirtyRanges(header.VirtualSize));
    }

    [Fact]
    public void Bitmaps_survive_many_sessions_and_qemu_writes_in_between()
    {
        using TempDirectory directory = new();
        string image = ImageWithBitmaps(directory);
        for (int session = 0; session < 3; session++)
        {
            using (Qcow2Image opened = Qcow2Disk.Open(image, new Qcow2OpenOptions()))
            {
                Assert.Equal(IoStatus.Ok, opened.WriteAt((8 + session) * MiB, TestData.Random(65536, session)));
                Assert.Equal(IoStatus.Ok, opened.Close());
            }
            QemuTools.RunOk(QemuTools.QemuIo, "-f", "qcow2", "-c", $"write -P 0x22 {40 + session}M 64k", image);
        }
        string check = QemuTools.RunOk(QemuTools.QemuImg, "check", image);
        Assert.Contains("No errors", check);
        Assert.DoesNotContain("leaked", check);
        Assert.Equal([(1 * MiB, 65536), (8 * MiB, 65536), (9 * MiB, 65536), (10 * MiB, 65536), (40 * MiB, 65536), (41 * MiB, 65536), (42 * MiB, 65536)],
            QemuTools.DirtyRanges(image, "coarse"));
    }

    [Fact]
    public void A_bitmap_qemu_left_in_use_is_kept_and_reported_not_trusted()
    {
        using TempDirectory directory = new();
        string image = ImageWithBitmaps(directory);
        QemuTools.CrashWhileOpen(image);
        Assert.Contains("in-use", BitmapFlags(image, "coarse"));

        using (Qcow2Image opened = Qcow2Disk.Open(image, new Qcow2OpenOptions()))
        {
            PersistentBitmap coarse = opened.Bitmaps.Single(b => b.Name == "coarse");
            Assert.True(coarse.Inconsistent);
            Assert.Equal(IoStatus.IoError, opened.ClearBitmap("coarse"));
            Assert.Contains("inconsistent", opened.LastError);
            Assert.Equal(IoStatus.Ok, opened.WriteAt(4 * MiB, TestData.Random(65536, 1)));
            Assert.Equal(IoStatus.Ok, opened.Close());
        }

        // Still in use (QEMU will not use it either), the image clean, and QEMU can remove it.
        Assert.Contains("in-use", BitmapFlags(image, "coarse"));
        Assert.Contains("No errors", QemuTools.RunOk(QemuTools.QemuImg, "check", image));
        QemuTools.RunOk(QemuTools.QemuImg, "bitmap", "--remove", image, "coarse");
        Assert.Contains("No errors", QemuTools.RunOk(QemuTools.QemuImg, "check", image));
    }

    [Fact]
    public void In_place_writes_the_data_plane_makes_itself_are_dirty_too()
    {
        using TempDirectory directory = new();
        string image = ImageWithBitmaps(directory);
        using (Qcow2Image opened = Qcow2Disk.Open(image, new Qcow2OpenOptions()))
        {
            Span<FileExtent> extents = stackalloc FileExtent[4];
            IoBuffer[] buffers = [new IoBuffer(0x10000, 4096)];
            // An allocated cluster with refcount 1: the remap fast path may write into it in place.
            Assert.Equal(IoStatus.Ok, opened.WriteAt(2 * MiB, TestData.Random(65536, 4)));
            Assert.Equal(IoStatus.Ok, opened.ClearBitmap("coarse"));
            int count = opened.Remap(write: true, 2 * MiB + 8192, 4096, buffers, extents, out RemapLease lease);
            Assert.Equal(1, count);
            opened.ReleaseLease(lease);
            Assert.Equal(IoStatus.Ok, opened.Close());
        }
        Assert.Equal([(2 * MiB, 65536)], QemuTools.DirtyRanges(image, "coarse"));
    }

    private static string[] BitmapFlags(string image, string name)
    {
        using JsonDocument info = JsonDocument.Parse(QemuTools.RunOk(QemuTools.QemuImg, "info", "-U", "--output=json", image));
        JsonElement bitmaps = info.RootElement.GetProperty("format-specific").GetProperty("data").GetProperty("bitmaps");
        JsonElement bitmap = bitmaps.EnumerateArray().Single(b => b.GetProperty("name").GetString() == name);
        return bitmap.GetProperty("flags").EnumerateArray().Select(f => f.GetString()!).ToArray();
    }
}
