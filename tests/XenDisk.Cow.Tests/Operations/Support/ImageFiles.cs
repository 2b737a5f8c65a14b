using System.Text.Json;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Storage;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Operations.Support;

/// <summary>Image files for operation tests: a base with data and holes, overlays written against a byte model, QEMU's verdicts.</summary>
public static class ImageFiles
{
    /// <summary>Random data with a few all-zero stretches (which hydration leaves unallocated).</summary>
    public static byte[] BaseContents(int size, int seed)
    {
        byte[] data = TestData.Random(size, seed);
        Random random = new(seed);
        for (int i = 0; i < 4; i++)
        {
            int start = random.Next(size / 65536) * 65536;
            data.AsSpan(start, Math.Min(3 * 65536, size - start)).Clear();
        }
        return data;
    }

    public static string CreateOverlay(TempDirectory directory, string name, string backingName, string backingFormat, long size, int clusterSize, bool extendedL2)
    {
        string path = directory.File(name);
        Qcow2Disk.Create(path, new Qcow2CreateOptions
        {
            VirtualSize = size,
            ClusterSize = clusterSize,
            ExtendedL2 = extendedL2,
            BackingFile = backingName,
            BackingFormat = backingFormat,
        });
        return path;
    }

    public static Qcow2FileOptions Files(TempDirectory directory) => new() { BackingPolicy = BackingFilePolicy.InDirectories(directory.Path) };

    public static Qcow2Image Open(TempDirectory directory, string path, bool readOnly = false)
        => Qcow2Disk.Open(path, new Qcow2OpenOptions { ReadOnly = readOnly, BackingPolicy = BackingFilePolicy.InDirectories(directory.Path) });

    /// <summary>Random writes (and some discards) of 512-byte multiples, also across cluster boundaries, mirrored in <paramref name="model"/>.</summary>
    public static void WriteRandomly(IBlockDevice device, byte[] model, Random random, int count, int maximumSectors = 200, bool discards = true)
    {
        for (int i = 0; i < count; i++)
        {
            long offset = random.Next(model.Length / 512) * 512L;
            int length = (int)Math.Min((random.Next(maximumSectors) + 1) * 512L, model.Length - offset);
            if (discards && random.Next(6) == 0)
            {
                Assert.Equal(IoStatus.Ok, device.Discard(offset, length, false));
                Array.Clear(model, (int)offset, length);
            }
            else
            {
                byte[] data = TestData.Random(length, random.Next());
                Assert.Equal(IoStatus.Ok, device.WriteAt(offset, data));
                data.CopyTo(model, offset);
            }
        }
    }

    public static void AssertContents(byte[] expected, byte[] actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        int mismatch = expected.AsSpan().CommonPrefixLength(actual);
        Assert.True(mismatch == expected.Length, $"contents differ first at byte {mismatch} (sector {mismatch / 512})");
    }

    /// <summary>qemu-img check: no corruptions, no leaks, no check errors.</summary>
    public static void AssertQemuCheckClean(string image)
    {
        (int exitCode, string output) = QemuTools.Run(QemuTools.QemuImg, "check", "--output=json", image);
        Assert.True(exitCode == 0, $"qemu-img check {image} exited with {exitCode}:\n{output}");
        using JsonDocument json = JsonDocument.Parse(output);
        foreach (string field in new[] { "corruptions", "leaks", "check-errors" })
        {
            int count = json.RootElement.TryGetProperty(field, out JsonElement value) ? value.GetInt32() : 0;
            Assert.True(count == 0, $"qemu-img check reports {count} {field}:\n{output}");
        }
    }

    /// <summary>qemu-img info's backing-filename, or null when QEMU sees no backing file.</summary>
    public static string? QemuBackingFile(string image)
    {
        string output = QemuTools.RunOk(QemuTools.QemuImg, "info", "--output=json", "-U", image);
        using JsonDocument json = JsonDocument.Parse(output);
        return json.RootElement.TryGetProperty("backing-filename", out JsonElement value) ? value.GetString() : null;
    }

    /// <summary>What QEMU reads from the image: qemu-img convert to raw.</summary>
    public static byte[] QemuConvert(TempDirectory directory, string image)
    {
        string output = directory.File(Guid.NewGuid().ToString("N") + ".raw");
        QemuTools.RunOk(QemuTools.QemuImg, "convert", "-f", "qcow2", "-O", "raw", image, output);
        byte[] data = File.ReadAllBytes(output);
        File.Delete(output);
        return data;
    }

    /// <summary>The header as XenDisk reads it from the file.</summary>
    public static Qcow2Header Header(string image)
    {
        using FileImageDevice device = FileImageDevice.Open(image, readOnly: true);
        return Qcow2Disk.ReadHeader(device);
    }
}
