using System.Buffers.Binary;
using System.Text.Json;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Storage;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2;

/// <summary>
/// Images with persistent dirty bitmaps (qemu-img bitmap --add): the bitmap directory, tables and
/// data are in use. The checker counts them, repair keeps them, and the engine never writes over them.
/// </summary>
[Trait(Needs.Key, Needs.Qemu)]
public class PersistentBitmapTests
{
    /// <summary>An image with a bitmap that has dirty bits stored (so it owns a table and data clusters).</summary>
    private static string ImageWithBitmap(TempDirectory directory)
    {
        string image = directory.File("bitmaps.qcow2");
        QemuTools.RunOk(QemuTools.QemuImg, "create", "-q", "-f", "qcow2", image, "64M");
        QemuTools.RunOk(QemuTools.QemuImg, "bitmap", "--add", image, "b0");
        QemuTools.RunOk(QemuTools.QemuIo, "-f", "qcow2", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 32M 64k", image);
        QemuTools.RunOk(QemuTools.QemuImg, "bitmap", "--add", image, "b1");
        return image;
    }

    private static bool QemuListsBitmap(string image, string name)
    {
        using JsonDocument info = JsonDocument.Parse(QemuTools.RunOk(QemuTools.QemuImg, "info", "--output=json", image));
        JsonElement data = info.RootElement.GetProperty("format-specific").GetProperty("data");
        return data.TryGetProperty("bitmaps", out JsonElement bitmaps) && bitmaps.EnumerateArray().Any(b => b.GetProperty("name").GetString() == name);
    }

    [Fact]
    public void The_checker_counts_bitmap_clusters_and_repair_keeps_them()
    {
        using TempDirectory directory = new();
        string image = ImageWithBitmap(directory);
        using (FileImageDevice file = FileImageDevice.Open(image, readOnly: true))
        {
            Qcow2CheckReport report = Qcow2Checker.Check(file);
            Assert.True(report.IsClean, string.Join("\n", report.Messages));
        }

        // A leak to repair: a cluster past the end of the file counted once. The repair rebuilds the
        // refcounts from the references, and must keep every bitmap cluster counted.
        byte[] bytes = File.ReadAllBytes(image);
        long refTable = (long)BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(48));
        long refBlock = (long)BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan((int)refTable));
        long end = (bytes.Length + 65535) / 65536;
        using (FileStream stream = new(image, FileMode.Open, FileAccess.ReadWrite))
        {
            stream.SetLength((end + 1) * 65536);
            stream.Position = refBlock + end * 2;
            stream.Write([0, 1]);
        }
        using (FileImageDevice file = FileImageDevice.Open(image, readOnly: false))
        {
            Qcow2CheckReport report = Qcow2Checker.Check(file, repair: true);
            Assert.Equal(1, report.LeaksFixed);
            Assert.True(report.IsClean, string.Join("\n", report.Messages));
        }
        QemuTools.RunOk(QemuTools.QemuImg, "check", image);
        Assert.True(QemuListsBitmap(image, "b0"));
        Assert.True(QemuListsBitmap(image, "b1"));
        string read = QemuTools.RunOk(QemuTools.QemuIo, "-r", "-f", "qcow2", "-c", "read -P 0x11 0 1M", "-c", "read -P 0x22 32M 64k", image);
        Assert.DoesNotContain("verification failed", read);
    }

    [Fact]
    public void Writes_never_land_on_bitmap_clusters()
    {
        using TempDirectory directory = new();
        string image = ImageWithBitmap(directory);
        byte[] before = File.ReadAllBytes(image);
        List<(long Offset, long Length)> bitmapAreas = BitmapAreas(before);
        Assert.True(bitmapAreas.Count >= 3, "directory, a table and data");

        using (Qcow2Image opened = Qcow2Disk.Open(image, new Qcow2OpenOptions()))
        {
            for (long offset = 0; offset < 16 << 20; offset += 1 << 20)
            {
                Assert.Equal(IoStatus.Ok, opened.WriteAt(offset + (2 << 20), Enumerable.Repeat((byte)0x5a, 65536).ToArray()));
            }
            Assert.Equal(IoStatus.Ok, opened.Flush());
            // While open, the tables and data stay where they are (only the directory's in_use flags change);
            // on close the bitmaps are stored anew and the old clusters freed.
            byte[] during = File.ReadAllBytes(image);
            foreach ((long offset, long length) in bitmapAreas.Skip(1))
            {
                Assert.True(before.AsSpan((int)offset, (int)length).SequenceEqual(during.AsSpan((int)offset, (int)length)), $"bitmap area at 0x{offset:x} changed");
            }
            Assert.Equal(IoStatus.Ok, opened.Close());
        }
        using (FileImageDevice file = FileImageDevice.Open(image, readOnly: true))
        {
            Qcow2CheckReport report = Qcow2Checker.Check(file);
            Assert.True(report.IsClean, string.Join("\n", report.Messages));
        }
    }

    /// <summary>The bitmap directory, tables and data clusters, parsed here independently of the engine (=== Bitmaps extension ===, == Bitmaps ==).</summary>
    private static List<(long Offset, long Length)> BitmapAreas(byte[] file)
    {
        List<(long, long)> areas = [];
        int clusterSize = 1 << (int)BinaryPrimitives.ReadUInt32BigEndian(file.AsSpan(20));
        int position = (int)BinaryPrimitives.ReadUInt32BigEndian(file.AsSpan(100));
        while (true)
        {
            uint type = BinaryPrimitives.ReadUInt32BigEndian(file.AsSpan(position));
            int length = (int)BinaryPrimitives.ReadUInt32BigEndian(file.AsSpan(position + 4));
            Assert.NotEqual(0u, type);
            if (type == 0x23852875)
            {
                ReadOnlySpan<byte> data = file.AsSpan(position + 8, length);
                int count = (int)BinaryPrimitives.ReadUInt32BigEndian(data);
                long directorySize = (long)BinaryPrimitives.ReadUInt64BigEndian(data[8..]);
                long directory = (long)BinaryPrimitives.ReadUInt64BigEndian(data[16..]);
                areas.Add((directory, directorySize));
                int at = (int)directory;
                for (int i = 0; i < count; i++)
                {
                    long table = (long)BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan(at));
                    int entries = (int)BinaryPrimitives.ReadUInt32BigEndian(file.AsSpan(at + 8));
                    int nameSize = BinaryPrimitives.ReadUInt16BigEndian(file.AsSpan(at + 18));
                    int extraSize = (int)BinaryPrimitives.ReadUInt32BigEndian(file.AsSpan(at + 20));
                    areas.Add((table, entries * 8L));
                    for (int j = 0; j < entries; j++)
                    {
                        long cluster = (long)(BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan((int)table + j * 8)) & 0x00FF_FFFF_FFFF_FE00UL);
                        if (cluster != 0)
                        {
                            areas.Add((cluster, clusterSize));
                        }
                    }
                    at += (24 + extraSize + nameSize + 7) & ~7;
                }
                return areas;
            }
            position += 8 + ((length + 7) & ~7);
        }
    }
}
