using System.Buffers.Binary;
using System.Text.Json;
using XenDisk.Cli.Tests.Support;

namespace XenDisk.Cli.Tests;

/// <summary>`image convert -c`: compressed qcow2 clusters that QEMU reads back identically (== Compressed Clusters Descriptor ==).</summary>
[Trait(Needs.Key, Needs.Qemu)]
public sealed class ImageConvertCompressedTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private static string QemuOk(params string[] args)
    {
        ProcessResult result = QemuTools.Run(args[0], args[1..]);
        Assert.True(result.ExitCode == 0, result.ToString());
        return result.Output;
    }

    /// <summary>
    /// A raw disk with clusters that compress in different ways: a block repeated 8 KiB apart (matches
    /// far back in the cluster), text, random data (does not compress: stored as a normal cluster),
    /// zeros (not written), and a short last piece.
    /// </summary>
    private string Source()
    {
        string path = _dir.File("source.raw");
        Random random = new(7);
        byte[] block = new byte[8192];
        random.NextBytes(block);
        byte[] noise = new byte[65536];
        random.NextBytes(noise);
        using FileStream file = new(path, FileMode.Create);
        file.SetLength(32 << 20);
        for (int i = 0; i < 8; i++)
        {
            file.Write(block);
        }
        file.Position = 1 << 20;
        file.Write(noise);
        file.Position = 3 << 20;
        file.Write(System.Text.Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("the quick brown fox ", 12000))));
        file.Position = (32 << 20) - 1536;
        file.Write(block.AsSpan(0, 1536));
        return path;
    }

    [Theory]
    [InlineData("zlib")]
    [InlineData("zstd")]
    public void Qemu_reads_the_compressed_image_identically(string type)
    {
        string source = Source();
        string target = _dir.File($"compressed-{type}.qcow2");
        CliResult result = Xendisk.Run("image", "convert", "-c", "-O", "qcow2", "-o", $"compression_type={type}", source, target);
        Assert.True(result.ExitCode == 0, result.ToString());

        Assert.Contains("No errors", QemuOk("qemu-img", "check", target));
        Assert.Contains("Images are identical", QemuOk("qemu-img", "compare", "-f", "raw", "-F", "qcow2", source, target));
        using (JsonDocument info = JsonDocument.Parse(QemuOk("qemu-img", "info", "--output=json", target)))
        {
            Assert.Equal(type, info.RootElement.GetProperty("format-specific").GetProperty("data").GetProperty("compression-type").GetString());
        }
        (int compressed, int normal) = CountEntries(target);
        Assert.True(compressed >= 5, $"{compressed} compressed clusters");
        Assert.Equal(1, normal); // the random cluster
        // Several compressed clusters share a host cluster: the file is much smaller than the data.
        Assert.True(new FileInfo(target).Length < 8 * 65536, $"{new FileInfo(target).Length} bytes");

        // And XenDisk reads back what it wrote.
        CliResult read = Xendisk.Run("image", "compare", source, target);
        Assert.True(read.ExitCode == 0, read.ToString());
    }

    /// <summary>L2 entries with the compressed flag (bit 62) and normal allocated ones, parsed independently of the engine.</summary>
    private static (int Compressed, int Normal) CountEntries(string image)
    {
        byte[] file = File.ReadAllBytes(image);
        int clusterBits = (int)BinaryPrimitives.ReadUInt32BigEndian(file.AsSpan(20));
        int l1Size = (int)BinaryPrimitives.ReadUInt32BigEndian(file.AsSpan(36));
        long l1 = (long)BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan(40));
        int compressed = 0, normal = 0;
        for (int i = 0; i < l1Size; i++)
        {
            long l2 = (long)(BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan((int)l1 + i * 8)) & 0x00FF_FFFF_FFFF_FE00UL);
            for (int j = 0; l2 != 0 && j < 1 << (clusterBits - 3); j++)
            {
                ulong entry = BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan((int)l2 + j * 8));
                if ((entry & (1UL << 62)) != 0)
                {
                    compressed++;
                }
                else if ((entry & 0x00FF_FFFF_FFFF_FE00UL) != 0)
                {
                    normal++;
                }
            }
        }
        return (compressed, normal);
    }
}
