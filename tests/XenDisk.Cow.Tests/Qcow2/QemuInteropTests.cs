using System.Text.Json;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2;

/// <summary>Images XenDisk writes are read back exactly by QEMU and pass qemu-img check; images QEMU writes are read back exactly by XenDisk.</summary>
[Trait(Needs.Key, Needs.Qemu)]
public class QemuInteropTests
{
    private const int DiskSize = 8 << 20;

    public static TheoryData<int, bool, MetadataPolicy> XenDiskWrites() => new()
    {
        { 4096, false, MetadataPolicy.Flush },
        { 16384, true, MetadataPolicy.Flush },
        { 65536, true, MetadataPolicy.Flush },
        { 65536, false, MetadataPolicy.Sync },
        { 65536, true, MetadataPolicy.Lazy },
        { 2 << 20, true, MetadataPolicy.Flush },
        { 2 << 20, false, MetadataPolicy.Lazy },
        { 512, false, MetadataPolicy.Flush },
    };

    [Theory]
    [MemberData(nameof(XenDiskWrites))]
    public void Images_XenDisk_writes_pass_qemu_img_check_and_convert_back_exactly(int clusterSize, bool extendedL2, MetadataPolicy policy)
    {
        string qemuImg = QemuTools.QemuImg;
        using TempDirectory directory = new();
        byte[] baseData = TestData.Random(DiskSize, clusterSize);
        File.WriteAllBytes(directory.File("base.raw"), baseData);
        Qcow2Disk.Create(directory.File("overlay.qcow2"), new Qcow2CreateOptions
        {
            VirtualSize = DiskSize,
            ClusterSize = clusterSize,
            ExtendedL2 = extendedL2,
            BackingFile = "base.raw",
            BackingFormat = "raw",
        });
        byte[] model = (byte[])baseData.Clone();
        Random random = new(clusterSize + (int)policy);
        using (Qcow2Image image = Qcow2Disk.Open(directory.File("overlay.qcow2"), new Qcow2OpenOptions
        {
            Policy = policy,
            BackingPolicy = BackingFilePolicy.InDirectories(directory.Path),
        }))
        {
            for (int i = 0; i < 60; i++)
            {
                long offset = random.Next(DiskSize / 512) * 512L;
                int length = (int)Math.Min((random.Next(256) + 1) * 512L, DiskSize - offset);
                if (random.Next(5) == 0)
                {
                    Assert.Equal(IoStatus.Ok, image.Discard(offset, length, false));
                    Array.Clear(model, (int)offset, length);
                }
                else
                {
                    byte[] data = TestData.Random(length, random.Next());
                    Assert.Equal(IoStatus.Ok, image.WriteAt(offset, data));
                    data.CopyTo(model, offset);
                }
            }
            // A recognisable pattern for qemu-io's read -P.
            byte[] pattern = Enumerable.Repeat((byte)0xcd, 65536).ToArray();
            Assert.Equal(IoStatus.Ok, image.WriteAt(1 << 20, pattern));
            pattern.CopyTo(model, 1 << 20);
            Assert.Equal(IoStatus.Ok, image.Close());
        }

        string check = QemuTools.RunOk(qemuImg, "check", "--output=json", directory.File("overlay.qcow2"));
        using (JsonDocument json = JsonDocument.Parse(check))
        {
            JsonElement root = json.RootElement;
            Assert.Equal(0, Count(root, "corruptions"));
            Assert.Equal(0, Count(root, "leaks"));
            Assert.Equal(0, Count(root, "check-errors"));
        }
        string qemuIo = QemuTools.RunOk(QemuTools.QemuIo, "-r", "-f", "qcow2", "-c", "read -P 0xcd 1M 64k", directory.File("overlay.qcow2"));
        Assert.DoesNotContain("Pattern verification failed", qemuIo);
        QemuTools.RunOk(qemuImg, "convert", "-f", "qcow2", "-O", "raw", directory.File("overlay.qcow2"), directory.File("out.raw"));
        RandomWorkloadTests.AssertSame(model, 0, File.ReadAllBytes(directory.File("out.raw")));
    }

    private static int Count(JsonElement root, string name) => root.TryGetProperty(name, out JsonElement value) ? value.GetInt32() : 0;

    [Theory]
    [InlineData(65536, "on")]
    [InlineData(65536, "off")]
    [InlineData(16384, "on")]
    [InlineData(4096, "off")]
    [InlineData(2097152, "on")]
    [InlineData(512, "off")]
    public void Images_qemu_writes_are_read_back_exactly(int clusterSize, string extendedL2)
    {
        string qemuImg = QemuTools.QemuImg;
        using TempDirectory directory = new();
        byte[] baseData = TestData.Random(DiskSize, clusterSize + 1);
        File.WriteAllBytes(directory.File("base.raw"), baseData);
        string overlay = directory.File("overlay.qcow2");
        QemuTools.RunOk(qemuImg, "create", "-q", "-f", "qcow2", "-o", $"extended_l2={extendedL2},cluster_size={clusterSize}",
            "-b", "base.raw", "-F", "raw", overlay);
        byte[] model = (byte[])baseData.Clone();
        (string Command, long Offset, int Length, byte? Pattern)[] commands =
        [
            ("write -P 0xab 4096 8192", 4096, 8192, 0xab),
            ("write -P 0x11 1000448 4096", 1000448, 4096, 0x11),
            ("write -z 3145728 131072", 3145728, 131072, 0),
            ("write -P 0x5a 6291456 1048576", 6291456, 1048576, 0x5a),
            ("discard 6291456 65536", 6291456, 65536, null),
            ("write -P 0x77 6292480 512", 6292480, 512, 0x77),
        ];
        List<string> arguments = ["-f", "qcow2"];
        foreach (var command in commands)
        {
            arguments.AddRange(["-c", command.Command]);
        }
        arguments.Add(overlay);
        QemuTools.RunOk(QemuTools.QemuIo, [.. arguments]);
        foreach (var command in commands)
        {
            if (command.Pattern is byte value)
            {
                model.AsSpan((int)command.Offset, command.Length).Fill(value);
            }
            else
            {
                // qemu discards whole clusters only (reading zeros afterwards, not the base); compare
                // against what qemu itself reads back rather than guessing its granularity.
                byte[] converted = ConvertWithQemu(qemuImg, overlay, directory);
                converted.AsSpan((int)command.Offset, command.Length).CopyTo(model.AsSpan((int)command.Offset));
            }
        }
        using Qcow2Image image = Qcow2Disk.Open(overlay, new Qcow2OpenOptions { ReadOnly = true, BackingPolicy = BackingFilePolicy.InDirectories(directory.Path) });
        Assert.Equal(extendedL2 == "on", image.ExtendedL2);
        RandomWorkloadTests.AssertSame(model, 0, TestData.ReadAll(image));
    }

    private static byte[] ConvertWithQemu(string qemuImg, string image, TempDirectory directory)
    {
        string output = directory.File("qemu.raw");
        QemuTools.RunOk(qemuImg, "convert", "-f", "qcow2", "-O", "raw", image, output);
        return File.ReadAllBytes(output);
    }

    [Fact]
    public void XenDisk_checks_images_qemu_wrote_as_clean()
    {
        using TempDirectory directory = new();
        string image = directory.File("plain.qcow2");
        QemuTools.RunOk(QemuTools.QemuImg, "create", "-q", "-f", "qcow2", image, "16M");
        QemuTools.RunOk(QemuTools.QemuIo, "-f", "qcow2", "-c", "write -P 0x42 0 3M", "-c", "discard 1M 64k", image);
        using XenDisk.Cow.Storage.FileImageDevice file = XenDisk.Cow.Storage.FileImageDevice.Open(image, readOnly: true);
        Qcow2CheckReport report = Qcow2Checker.Check(file);
        Assert.True(report.IsClean, string.Join("\n", report.Messages));
    }
}
