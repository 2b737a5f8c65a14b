using System.Buffers.Binary;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2;

/// <summary>Files QEMU's tools make or accept that sit at the edges of the format: truncated images, unusual but valid entries.</summary>
[Trait(Needs.Key, Needs.Qemu)]
public class QemuEdgeCaseTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_refused_open_of_a_truncated_image_leaves_the_file_as_it_was_and_names_the_real_problem(bool readOnly)
    {
        using TempDirectory directory = new();
        string full = directory.File("full.qcow2");
        QemuTools.RunOk(QemuTools.QemuImg, "create", "-q", "-f", "qcow2", full, "16M");
        string path = directory.File("truncated.qcow2");
        byte[] head = File.ReadAllBytes(full).AsSpan(0, 300).ToArray();
        File.WriteAllBytes(path, head);

        StorageException refused = Assert.Throws<StorageException>(() => Qcow2Disk.Open(path, new Qcow2OpenOptions { ReadOnly = readOnly }));

        Assert.DoesNotContain("bad magic", refused.Message);
        Assert.Contains("beyond the end of the file (300 bytes)", refused.Message);
        Assert.Equal(head, File.ReadAllBytes(path));
    }

    [Theory]
    [InlineData("off")]
    [InlineData("on")]
    public void An_L2_entry_with_only_the_copied_flag_reads_as_unallocated(string extendedL2)
    {
        using TempDirectory directory = new();
        string path = directory.File("img.qcow2");
        QemuTools.RunOk(QemuTools.QemuImg, "create", "-q", "-f", "qcow2", "-o", $"extended_l2={extendedL2}", path, "16M");
        QemuTools.RunOk(QemuTools.QemuIo, "-f", "qcow2", "-c", "write -P 0x11 0 64k", path);
        byte[] file = File.ReadAllBytes(path);
        long l1 = (long)BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan(40));
        long l2 = (long)(BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan((int)l1)) & 0x00FF_FFFF_FFFF_FE00UL);
        int entrySize = extendedL2 == "on" ? 16 : 8;
        using (FileStream stream = new(path, FileMode.Open, FileAccess.ReadWrite))
        {
            // Guest cluster 3: COPIED and nothing else (== Cluster mapping ==: offset 0 is unallocated).
            stream.Position = l2 + 3 * entrySize;
            stream.Write([0x80, 0, 0, 0, 0, 0, 0, 0]);
        }
        string qemu = QemuTools.RunOk(QemuTools.QemuIo, "-r", "-f", "qcow2", "-c", "read -P 0 192k 64k", path);
        Assert.DoesNotContain("verification failed", qemu);

        using (Qcow2Image image = Qcow2Disk.Open(path, new Qcow2OpenOptions()))
        {
            byte[] data = Enumerable.Repeat((byte)0xff, 64 << 10).ToArray();
            Assert.Equal(IoStatus.Ok, image.ReadAt(192 << 10, data));
            Assert.All(data, b => Assert.Equal(0, b));
            // Writing it allocates a cluster like any unallocated one.
            Assert.Equal(IoStatus.Ok, image.WriteAt(192 << 10, Enumerable.Repeat((byte)0x3c, 4096).ToArray()));
            Assert.Equal(IoStatus.Ok, image.Close());
        }
        QemuTools.RunOk(QemuTools.QemuImg, "check", path);
        qemu = QemuTools.RunOk(QemuTools.QemuIo, "-r", "-f", "qcow2", "-c", "read -P 0x3c 192k 4k", "-c", "read -P 0 196k 60k", "-c", "read -P 0x11 0 64k", path);
        Assert.DoesNotContain("verification failed", qemu);
    }
}
