using System.Buffers.Binary;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2;

/// <summary>
/// A request the engine refuses (unsupported, out of range, a cluster it will not write) fails alone:
/// the image stays writable and nothing is marked on disk. Only failed metadata writes and real
/// corruption put an image into its failed state.
/// </summary>
[Trait(Needs.Key, Needs.Qemu)]
public class RefusedRequestTests
{
    /// <summary>qemu-img's layout for a fresh 16 MiB image with 64 KiB clusters: the L2 table follows header, refcount table, refcount block and L1 table.</summary>
    private static (long L2Offset, long RefBlockOffset) Layout(string path)
    {
        byte[] file = File.ReadAllBytes(path);
        long l1 = (long)BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan(40));
        long refTable = (long)BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan(48));
        long refBlock = (long)BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan((int)refTable));
        long l2 = (long)(BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan((int)l1)) & 0x00FF_FFFF_FFFF_FE00UL);
        return (l2, refBlock);
    }

    [Fact]
    public void Refused_requests_leave_the_image_writable()
    {
        using TempDirectory directory = new();
        string path = directory.File("img.qcow2");
        QemuTools.RunOk(QemuTools.QemuImg, "create", "-q", "-f", "qcow2", path, "16M");
        QemuTools.RunOk(QemuTools.QemuIo, "-f", "qcow2", "-c", "write -P 0x11 0 64k", "-c", "write -P 0x22 64k 64k", path);
        (long l2, long refBlock) = Layout(path);
        using (FileStream file = new(path, FileMode.Open, FileAccess.ReadWrite))
        {
            byte[] entry = new byte[8];
            file.Position = l2;
            file.ReadExactly(entry);
            ulong host = BinaryPrimitives.ReadUInt64BigEndian(entry) & 0x00FF_FFFF_FFFF_FE00UL;
            // Guest cluster 0: shared (refcount 2, no COPIED), as after an internal snapshot.
            BinaryPrimitives.WriteUInt64BigEndian(entry, host);
            file.Position = l2;
            file.Write(entry);
            file.Position = refBlock + (long)(host >> 16) * 2;
            file.Write([0, 2]);
            // Guest cluster 1: reserved bits set, an entry no version of the format allows.
            file.Position = l2 + 8;
            file.ReadExactly(entry);
            entry[7] |= 0x02;
            file.Position = l2 + 8;
            file.Write(entry);
        }

        using (Qcow2Image image = Qcow2Disk.Open(path, new Qcow2OpenOptions()))
        {
            byte[] data = Enumerable.Repeat((byte)0x77, 4096).ToArray();
            Assert.Equal(IoStatus.IoError, image.WriteAt(0, data));
            Assert.Contains("shared", image.LastError);
            Assert.Equal(IoStatus.IoError, image.WriteAt(64 << 10, data));
            Assert.Contains("invalid L2 entry", image.LastError);
            Assert.Equal(IoStatus.IoError, image.Discard(64 << 10, 64 << 10, false));
            Assert.Equal(IoStatus.IoError, image.Discard(0, 64 << 10, false));
            Assert.Equal(IoStatus.NotSupported, image.Discard(0, 64 << 10, true));
            Assert.NotEqual(IoStatus.Ok, image.WriteAt(16 << 20, data));
            Assert.NotEqual(IoStatus.Ok, image.Resize(8 << 20));

            Assert.Null(image.Failure);
            Assert.Equal(IoStatus.Ok, image.WriteAt(2 << 20, data));
            Assert.Equal(IoStatus.Ok, image.Flush());
            Assert.Equal(IoStatus.Ok, image.Close());
        }
        string read = QemuTools.RunOk(QemuTools.QemuIo, "-r", "-f", "qcow2", "-c", "read -P 0x77 2M 4k", "-c", "read -P 0x11 0 64k", path);
        Assert.DoesNotContain("verification failed", read);
        Assert.DoesNotContain("corrupt: true", QemuTools.RunOk(QemuTools.QemuImg, "info", path));
    }
}
