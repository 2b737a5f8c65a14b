using System.Text;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2;

/// <summary>
/// Images with compressed clusters, made by <c>qemu-img convert -c</c> with zlib and zstd: every byte
/// reads back as the source; writes copy a compressed cluster up; discards drop it; and afterwards
/// qemu-img check finds the image clean (refcounts per host cluster, shared by several compressed
/// clusters) and qemu-img compare finds it equal to the expected contents.
/// </summary>
[Trait(Needs.Key, Needs.Qemu)]
public class CompressedClusterTests
{
    private const int DiskSize = 8 << 20;

    /// <summary>Clusters of text (compresses well, several per host cluster), zeros, one repeated byte, and random bytes (stored uncompressed).</summary>
    private static byte[] Source(int clusterSize)
    {
        byte[] data = new byte[DiskSize];
        Random random = new(clusterSize);
        for (int cluster = 0; cluster < DiskSize / clusterSize; cluster++)
        {
            Span<byte> span = data.AsSpan(cluster * clusterSize, clusterSize);
            switch (cluster % 5)
            {
                case 0:
                    random.NextBytes(span);
                    break;
                case 1:
                case 3:
                    byte[] text = Encoding.ASCII.GetBytes($"cluster {cluster} of a compressed qcow2 image; ");
                    for (int i = 0; i < span.Length; i++)
                    {
                        span[i] = text[i % text.Length];
                    }
                    break;
                case 2:
                    break; // zeros
                default:
                    span.Fill((byte)cluster);
                    break;
            }
        }
        return data;
    }

    private static string Convert(TempDirectory directory, byte[] source, string compression, int clusterSize, string extendedL2 = "off")
    {
        string raw = directory.File("source.raw");
        File.WriteAllBytes(raw, source);
        string image = directory.File($"compressed-{compression}.qcow2");
        QemuTools.RunOk(QemuTools.QemuImg, "convert", "-c", "-f", "raw", "-O", "qcow2",
            "-o", $"compression_type={compression},cluster_size={clusterSize},extended_l2={extendedL2}", raw, image);
        return image;
    }

    [Theory]
    [InlineData("zlib", 65536, "off")]
    [InlineData("zstd", 65536, "off")]
    [InlineData("zlib", 4096, "off")]
    [InlineData("zstd", 16384, "on")]
    [InlineData("zlib", 2 << 20, "off")]
    public void Every_byte_of_a_compressed_image_reads_as_the_source(string compression, int clusterSize, string extendedL2)
    {
        using TempDirectory directory = new();
        byte[] source = Source(clusterSize);
        string image = Convert(directory, source, compression, clusterSize, extendedL2);

        using Qcow2Image opened = Qcow2Disk.Open(image, new Qcow2OpenOptions { ReadOnly = true });
        Assert.Contains(opened.Map(), e => e.Kind == Qcow2ExtentKind.Compressed);
        RandomWorkloadTests.AssertSame(source, 0, TestData.ReadAll(opened));
        // Reads that start and end inside a compressed cluster.
        byte[] part = new byte[3 * 512];
        long offset = clusterSize + 1024L;
        Assert.Equal(IoStatus.Ok, opened.ReadAt(offset, part));
        Assert.True(source.AsSpan((int)offset, part.Length).SequenceEqual(part));
    }

    [Theory]
    [InlineData("zlib", "off")]
    [InlineData("zstd", "off")]
    [InlineData("zstd", "on")]
    public void Writes_and_discards_into_compressed_clusters_leave_a_clean_image_qemu_reads_as_expected(string compression, string extendedL2)
    {
        const int ClusterSize = 65536;
        using TempDirectory directory = new();
        byte[] expected = Source(ClusterSize);
        string image = Convert(directory, expected, compression, ClusterSize, extendedL2);

        using (Qcow2Image opened = Qcow2Disk.Open(image, new Qcow2OpenOptions()))
        {
            void Write(long offset, int length, byte value)
            {
                byte[] data = Enumerable.Repeat(value, length).ToArray();
                Assert.Equal(IoStatus.Ok, opened.WriteAt(offset, data));
                data.CopyTo(expected, offset);
            }
            void Discard(long offset, int length)
            {
                Assert.Equal(IoStatus.Ok, opened.Discard(offset, length, false));
                Array.Clear(expected, (int)offset, length);
            }
            // Clusters 1 and 3 are text, cluster 4 one repeated byte: all compressed, several sharing host clusters.
            Write(1L * ClusterSize + 4096, 512, 0xa1);           // inside a compressed cluster: copy-up
            Write(3L * ClusterSize, ClusterSize, 0xa3);          // the whole cluster
            Write(6L * ClusterSize + ClusterSize - 512, 1024, 0xa6); // across two compressed clusters
            Discard(8L * ClusterSize, ClusterSize);              // a whole compressed cluster
            Discard(9L * ClusterSize + 8192, 16384);             // part of one
            Write(11L * ClusterSize + 512, 512, 0xab);
            Discard(11L * ClusterSize, ClusterSize);             // a cluster copied up just before
            Assert.Equal(IoStatus.Ok, opened.Flush());
            // Reads after the copy-ups, before close.
            RandomWorkloadTests.AssertSame(expected, 0, TestData.ReadAll(opened));
            Assert.Equal(IoStatus.Ok, opened.Close());
        }

        QemuTools.RunOk(QemuTools.QemuImg, "check", image);
        string expectedRaw = directory.File("expected.raw");
        File.WriteAllBytes(expectedRaw, expected);
        QemuTools.RunOk(QemuTools.QemuImg, "compare", "-f", "qcow2", "-F", "raw", image, expectedRaw);
        // XenDisk reads back what it wrote, from the file as closed.
        using Qcow2Image reopened = Qcow2Disk.Open(image, new Qcow2OpenOptions { ReadOnly = true });
        RandomWorkloadTests.AssertSame(expected, 0, TestData.ReadAll(reopened));
    }

    [Fact]
    public void A_corrupt_compressed_cluster_fails_its_read_alone_and_the_image_stays_usable()
    {
        using TempDirectory directory = new();
        byte[] source = Source(65536);
        string image = Convert(directory, source, "zlib", 65536);
        long compressedAt;
        using (Qcow2Image opened = Qcow2Disk.Open(image, new Qcow2OpenOptions { ReadOnly = true }))
        {
            compressedAt = opened.Map().First(e => e.Kind == Qcow2ExtentKind.Compressed && e.Offset == 65536).HostOffset;
        }
        using (FileStream file = new(image, FileMode.Open, FileAccess.ReadWrite))
        {
            file.Position = compressedAt;
            file.Write(Enumerable.Repeat((byte)0xff, 64).ToArray());
        }
        using (Qcow2Image opened = Qcow2Disk.Open(image, new Qcow2OpenOptions()))
        {
            byte[] cluster = new byte[65536];
            Assert.Equal(IoStatus.IoError, opened.ReadAt(65536, cluster));
            Assert.Contains("decompress", opened.LastError);
            Assert.Equal(IoStatus.IoError, opened.WriteAt(65536, new byte[512]));
            Assert.Null(opened.Failure);
            Assert.Equal(IoStatus.Ok, opened.ReadAt(4 * 65536, cluster));
            Assert.True(source.AsSpan(4 * 65536, 65536).SequenceEqual(cluster));
            Assert.Equal(IoStatus.Ok, opened.WriteAt(0, new byte[512]));
            Assert.Equal(IoStatus.Ok, opened.Close());
        }
    }
}
