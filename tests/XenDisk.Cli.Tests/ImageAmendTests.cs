using System.Buffers.Binary;
using System.Text.Json;
using XenDisk.Cli.Tests.Support;

namespace XenDisk.Cli.Tests;

/// <summary>`xendisk image amend -o compat=...,lazy_refcounts=...` on images qemu-img made, checked by qemu-img.</summary>
[Trait(Needs.Key, Needs.Qemu)]
public sealed class ImageAmendTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private static void Ok(CliResult result) => Assert.True(result.ExitCode == 0, result.ToString());

    private static string QemuOk(params string[] args)
    {
        ProcessResult result = QemuTools.Run(args[0], args[1..]);
        Assert.True(result.ExitCode == 0, result.ToString());
        return result.Output;
    }

    private static (string Compat, bool Lazy) Compat(string image)
    {
        using JsonDocument info = JsonDocument.Parse(QemuOk("qemu-img", "info", "--output=json", image));
        JsonElement data = info.RootElement.GetProperty("format-specific").GetProperty("data");
        return (data.GetProperty("compat").GetString()!, data.TryGetProperty("lazy-refcounts", out JsonElement lazy) && lazy.GetBoolean());
    }

    private static void SameAsQemuCopy(string image, string reference)
    {
        Assert.Contains("No errors", QemuOk("qemu-img", "check", image));
        Assert.Contains("Images are identical", QemuOk("qemu-img", "compare", image, reference));
    }

    [Fact]
    public void Upgrades_version_2_and_turns_lazy_refcounts_on()
    {
        string image = _dir.File("old.qcow2");
        QemuOk("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", image, "64M");
        QemuOk("qemu-io", "-f", "qcow2", "-c", "write -P 0x17 1M 64k", image);
        string reference = _dir.File("reference.qcow2");
        File.Copy(image, reference);

        Ok(Xendisk.Run("image", "amend", "-o", "compat=1.1,lazy_refcounts=on", image));
        Assert.Equal(("1.1", true), Compat(image));
        SameAsQemuCopy(image, reference);
        Ok(Xendisk.Run("image", "amend", "-o", "lazy_refcounts=off", image));
        Assert.Equal(("1.1", false), Compat(image));
        SameAsQemuCopy(image, reference);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Downgrades_to_version_2_without_zero_clusters(bool withBacking)
    {
        string image = _dir.File("new.qcow2");
        if (withBacking)
        {
            string basePath = _dir.File("base.raw");
            QemuOk("qemu-img", "create", "-q", "-f", "raw", basePath, "64M");
            QemuOk("qemu-io", "-f", "raw", "-c", "write -P 0x55 0 64M", basePath);
            QemuOk("qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", "-b", basePath, "-F", "raw", image);
        }
        else
        {
            QemuOk("qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", image, "64M");
        }
        // Zero clusters of both kinds: unallocated (write -z) and allocated (data, then zeroed).
        QemuOk("qemu-io", "-f", "qcow2", "-c", "write -P 0x17 1M 64k", "-c", "write -z 4M 128k", "-c", "write -P 0x18 8M 64k", "-c", "write -z 8M 64k", image);
        string reference = _dir.File("reference.qcow2");
        File.Copy(image, reference);
        Assert.True(ZeroFlaggedL2Entries(reference) >= 3, "qemu-io made zero clusters");

        Ok(Xendisk.Run("image", "amend", "-o", "compat=0.10", image));
        Assert.Equal(("0.10", false), Compat(image));
        SameAsQemuCopy(image, reference);
        Assert.Equal(0, ZeroFlaggedL2Entries(image));
    }

    [Fact]
    public void Refuses_what_qemu_refuses_and_what_version_2_cannot_hold()
    {
        string extended = _dir.File("extended.qcow2");
        QemuOk("qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", extended, "1M");
        string narrow = _dir.File("narrow.qcow2");
        QemuOk("qemu-img", "create", "-q", "-f", "qcow2", "-o", "refcount_bits=8", narrow, "1M");
        string bitmaps = _dir.File("bitmaps.qcow2");
        QemuOk("qemu-img", "create", "-q", "-f", "qcow2", bitmaps, "1M");
        QemuOk("qemu-img", "bitmap", "--add", bitmaps, "b");

        Assert.Contains("Cannot downgrade an image with incompatible features 0x10 set", Xendisk.Run("image", "amend", "-o", "compat=0.10", extended).Error);
        Assert.Contains("compat=0.10 requires refcount_bits=16", Xendisk.Run("image", "amend", "-o", "compat=0.10", narrow).Error);
        Assert.Contains("Lazy refcounts only supported with compatibility level 1.1", Xendisk.Run("image", "amend", "-o", "compat=0.10,lazy_refcounts=on", narrow).Error);
        Assert.Contains("persistent bitmaps", Xendisk.Run("image", "amend", "-o", "compat=0.10", bitmaps).Error);
        Assert.Contains("not supported", Xendisk.Run("image", "amend", "-o", "cluster_size=4k", narrow).Error);
        foreach (string image in new[] { extended, narrow, bitmaps })
        {
            Assert.Equal("1.1", Compat(image).Compat);
            Assert.Contains("No errors", QemuOk("qemu-img", "check", image));
        }
    }

    /// <summary>L2 entries with bit 0 (reads as zeros), which version 2 does not define (== Cluster mapping ==), parsed independently of the engine.</summary>
    private static int ZeroFlaggedL2Entries(string image)
    {
        byte[] file = File.ReadAllBytes(image);
        int clusterBits = (int)BinaryPrimitives.ReadUInt32BigEndian(file.AsSpan(20));
        int l1Size = (int)BinaryPrimitives.ReadUInt32BigEndian(file.AsSpan(36));
        long l1 = (long)BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan(40));
        int count = 0;
        for (int i = 0; i < l1Size; i++)
        {
            long l2 = (long)(BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan((int)l1 + i * 8)) & 0x00FF_FFFF_FFFF_FE00UL);
            for (int j = 0; l2 != 0 && j < 1 << (clusterBits - 3); j++)
            {
                count += (int)(BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan((int)l2 + j * 8)) & 1);
            }
        }
        return count;
    }
}
