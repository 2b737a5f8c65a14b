using System.Text.Json;
using XenDisk.Cli.Tests.Support;

namespace XenDisk.Cli.Tests;

/// <summary>
/// convert, compare and resize against qemu-img on images qemu-img and qemu-io made: XenDisk's output
/// must be `qemu-img check` clean and `qemu-img compare` identical to what qemu-img produces from the same input.
/// </summary>
[Trait(Needs.Key, Needs.Qemu)]
public sealed class ImageVerbTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private static void Qemu(string tool, params string[] args)
    {
        ProcessResult result = QemuTools.Run(tool, args);
        Assert.True(result.ExitCode == 0, $"{tool} {string.Join(' ', args)}: {result}");
    }

    /// <summary>A qcow2 overlay over a raw base, written by qemu-io: data, zeros over base data, and untouched base.</summary>
    private string Qcow2Chain()
    {
        string baseImage = _dir.File("base.raw");
        Qemu("qemu-img", "create", "-f", "raw", baseImage, "8M");
        Qemu("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 2M", "-c", "write -P 0x22 6M 64k", baseImage);
        string overlay = _dir.File("overlay.qcow2");
        Qemu("qemu-img", "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", overlay);
        Qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1M 68k", "-c", "write -z 0 64k", "-c", "write -P 0xcd 7M 4k", overlay);
        return overlay;
    }

    private static List<(long Start, long Length)> DataExtents(string image)
    {
        ProcessResult map = QemuTools.Run("qemu-img", "map", "--output=json", image);
        Assert.True(map.ExitCode == 0, map.ToString());
        // Adjacent guest ranges are merged: qemu-img map splits where host offsets are not contiguous,
        // and the order clusters are allocated in is not part of the contents.
        List<(long Start, long Length)> extents = [];
        foreach (JsonElement extent in JsonDocument.Parse(map.Output).RootElement.EnumerateArray())
        {
            if (!extent.GetProperty("data").GetBoolean())
            {
                continue;
            }
            long start = extent.GetProperty("start").GetInt64();
            long length = extent.GetProperty("length").GetInt64();
            if (extents.Count > 0 && extents[^1].Start + extents[^1].Length == start)
            {
                extents[^1] = (extents[^1].Start, extents[^1].Length + length);
            }
            else
            {
                extents.Add((start, length));
            }
        }
        return extents;
    }

    [Theory]
    [InlineData("qcow2")]
    [InlineData("raw")]
    public void Convert_matches_qemu_img_convert_and_skips_zeros(string outputFormat)
    {
        string source = Qcow2Chain();
        string ours = _dir.File("ours." + outputFormat);
        string theirs = _dir.File("theirs." + outputFormat);
        Qemu("qemu-img", "convert", "-f", "qcow2", "-O", outputFormat, source, theirs);

        CliResult converted = Xendisk.Run("image", "convert", "-f", "qcow2", "-O", outputFormat, source, ours);

        Assert.True(converted.ExitCode == 0, converted.ToString());
        Assert.Equal(0, QemuTools.Run("qemu-img", "compare", "-f", outputFormat, "-F", outputFormat, ours, theirs).ExitCode);
        Assert.Equal(0, QemuTools.Run("qemu-img", "compare", "-f", "qcow2", "-F", outputFormat, source, ours).ExitCode);
        if (outputFormat == "qcow2")
        {
            Qemu("qemu-img", "check", ours);
        }
        // Zero detection: data only where qemu-img convert also wrote data (the zeroed cluster, the untouched tail: holes).
        // QEMU's file driver allocates the first block of every raw file it creates (file-posix.c,
        // allocate_first_block, so that O_DIRECT alignment can be probed); that block is not data.
        List<(long Start, long Length)> expected = DataExtents(theirs);
        if (outputFormat == "raw")
        {
            expected.Remove((0, 4096));
        }
        Assert.Equal(expected, DataExtents(ours));
    }

    [Fact]
    public void Convert_compressed_to_raw_is_refused_as_qemu_img_refuses_it()
    {
        string source = Qcow2Chain();
        CliResult result = Xendisk.Run("image", "convert", "-c", "-O", "raw", source, _dir.File("c.raw"));
        Assert.Equal(2, result.ExitCode);
        Assert.Contains("Compression not supported for this file format", result.Error);
        Assert.False(File.Exists(_dir.File("c.raw")));
    }

    [Fact]
    public void Compare_exit_codes_and_first_offset_as_qemu_img()
    {
        string source = Qcow2Chain();
        string copy = _dir.File("copy.raw");
        Qemu("qemu-img", "convert", "-f", "qcow2", "-O", "raw", source, copy);

        CliResult same = Xendisk.Run("image", "compare", source, copy);
        Assert.True(same.ExitCode == 0, same.ToString());
        Assert.Contains("Images are identical.", same.Output);

        Qemu("qemu-io", "-f", "raw", "-c", "write -P 0x5a 3145728 512", copy);
        CliResult different = Xendisk.Run("image", "compare", source, copy);
        ProcessResult theirs = QemuTools.Run("qemu-img", "compare", source, copy);
        Assert.Equal(1, different.ExitCode);
        Assert.Equal(1, theirs.ExitCode);
        Assert.Contains("Content mismatch at offset 3145728!", different.Output);
        Assert.Contains("Content mismatch at offset 3145728!", theirs.Output);

        CliResult missing = Xendisk.Run("image", "compare", source, _dir.File("missing.raw"));
        Assert.Equal(2, missing.ExitCode);
        Xendisk.AssertNoStackTrace(missing);
    }

    [Fact]
    public void Compare_larger_image_with_zeros_is_identical_unless_strict()
    {
        string small = _dir.File("small.raw");
        string large = _dir.File("large.raw");
        Qemu("qemu-img", "create", "-f", "raw", small, "1M");
        Qemu("qemu-img", "create", "-f", "qcow2", large, "2M");

        CliResult lenient = Xendisk.Run("image", "compare", small, large);
        Assert.Equal(QemuTools.Run("qemu-img", "compare", small, large).ExitCode, lenient.ExitCode);
        Assert.Equal(0, lenient.ExitCode);
        Assert.Equal(1, Xendisk.Run("image", "compare", "-s", small, large).ExitCode);
    }

    [Fact]
    public void Resize_qcow2_grows_as_qemu_img_resize_does()
    {
        string ours = Qcow2Chain();
        string theirs = _dir.File("theirs.qcow2");
        File.Copy(ours, theirs);
        Qemu("qemu-img", "resize", theirs, "+1G");

        CliResult resized = Xendisk.Run("image", "resize", ours, "+1G");

        Assert.True(resized.ExitCode == 0, resized.ToString());
        Assert.Contains("Image resized.", resized.Output);
        Qemu("qemu-img", "check", ours);
        Assert.Equal(0, QemuTools.Run("qemu-img", "compare", "-s", ours, theirs).ExitCode);
        CliResult shrink = Xendisk.Run("image", "resize", ours, "-1G");
        Assert.Equal(2, shrink.ExitCode);
        Assert.Contains("--shrink", shrink.Error);
    }

    [Fact]
    public void Resize_raw_shrinks_only_with_shrink()
    {
        string raw = _dir.File("disk.raw");
        Qemu("qemu-img", "create", "-f", "raw", raw, "4M");

        Assert.Equal(2, Xendisk.Run("image", "resize", "-f", "raw", raw, "1M").ExitCode);
        Assert.Equal(4L << 20, new FileInfo(raw).Length);

        CliResult shrunk = Xendisk.Run("image", "resize", "-f", "raw", "--shrink", raw, "1M");
        Assert.True(shrunk.ExitCode == 0, shrunk.ToString());
        Assert.Equal(1L << 20, new FileInfo(raw).Length);
        Assert.True(Xendisk.Run("image", "resize", "-f", "raw", raw, "+3M").ExitCode == 0);
        Assert.Equal(4L << 20, new FileInfo(raw).Length);
    }

    [Fact]
    public void Info_on_a_39_byte_file_reports_39_bytes()
    {
        string tiny = _dir.File("tiny.img");
        File.WriteAllBytes(tiny, new byte[39]);
        CliResult info = Xendisk.Run("image", "info", tiny);
        Assert.True(info.ExitCode == 0, info.ToString());
        Assert.Contains("virtual size: 39 B (39 bytes)", info.Output);
    }
}

public sealed class BackingChainInfoTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public void Backing_chain_lists_the_images_qemu_img_lists()
    {
        string baseImage = _dir.File("base.raw");
        Assert.Equal(0, QemuTools.Run("qemu-img", "create", "-f", "raw", baseImage, "4M").ExitCode);
        Assert.Equal(0, QemuTools.Run("qemu-img", "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", _dir.File("mid.qcow2")).ExitCode);
        string top = _dir.File("top.qcow2");
        Assert.Equal(0, QemuTools.Run("qemu-img", "create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top, "8M").ExitCode);

        CliResult ours = Xendisk.Run("image", "info", "--backing-chain", "--output=json", top);
        ProcessResult theirs = QemuTools.Run("qemu-img", "info", "--backing-chain", "--output=json", top);

        Assert.True(ours.ExitCode == 0, ours.ToString());
        JsonElement[] a = [.. JsonDocument.Parse(ours.Output).RootElement.EnumerateArray()];
        JsonElement[] b = [.. JsonDocument.Parse(theirs.Output).RootElement.EnumerateArray()];
        Assert.Equal(b.Length, a.Length);
        for (int i = 0; i < a.Length; i++)
        {
            Assert.Equal(b[i].GetProperty("format").GetString(), a[i].GetProperty("format").GetString());
            Assert.Equal(b[i].GetProperty("virtual-size").GetInt64(), a[i].GetProperty("virtualSize").GetInt64());
            Assert.Equal(Path.GetFileName(b[i].GetProperty("filename").GetString()), Path.GetFileName(a[i].GetProperty("filename").GetString()));
        }

        CliResult text = Xendisk.Run("image", "info", "--backing-chain", top);
        Assert.Equal(3, text.Output.Split("image: ").Length - 1);
    }

    [Fact]
    public void Backing_chain_outside_the_image_directory_needs_allow_base()
    {
        using TempDirectory other = new();
        string baseImage = other.File("base.raw");
        Assert.Equal(0, QemuTools.Run("qemu-img", "create", "-f", "raw", baseImage, "1M").ExitCode);
        string top = _dir.File("top.qcow2");
        Assert.Equal(0, QemuTools.Run("qemu-img", "create", "-f", "qcow2", "-b", baseImage, "-F", "raw", top).ExitCode);

        CliResult refused = Xendisk.Run("image", "info", "--backing-chain", top);
        Assert.Equal(1, refused.ExitCode);
        Assert.Contains("--allow-base", refused.Error);
        Assert.Equal(0, Xendisk.Run("image", "info", "--backing-chain", "--allow-base", other.Path, top).ExitCode);
    }
}

public sealed class MeasureTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private static (long Required, long FullyAllocated) Sizes(string json)
    {
        JsonElement root = JsonDocument.Parse(json).RootElement;
        return (root.GetProperty("required").GetInt64(), root.GetProperty("fully-allocated").GetInt64());
    }

    [Theory]
    [InlineData("qcow2", "1M")]
    [InlineData("qcow2", "10G")]
    [InlineData("qcow2", "3000M")]
    [InlineData("raw", "1G")]
    public void Size_matches_qemu_img_measure(string format, string size)
    {
        CliResult ours = Xendisk.Run("image", "measure", "-O", format, "--size", size, "--output=json");
        ProcessResult theirs = QemuTools.Run("qemu-img", "measure", "-O", format, "--size", size, "--output=json");
        Assert.True(ours.ExitCode == 0, ours.ToString());
        Assert.Equal(Sizes(theirs.Output), Sizes(ours.Output));
    }

    [Fact]
    public void Image_matches_qemu_img_measure()
    {
        string image = _dir.File("data.qcow2");
        Assert.Equal(0, QemuTools.Run("qemu-img", "create", "-f", "qcow2", image, "64M").ExitCode);
        Assert.Equal(0, QemuTools.Run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 33M 4k", image).ExitCode);

        CliResult ours = Xendisk.Run("image", "measure", "-O", "qcow2", "--output=json", image);
        ProcessResult theirs = QemuTools.Run("qemu-img", "measure", "-O", "qcow2", "--output=json", image);

        Assert.True(ours.ExitCode == 0, ours.ToString());
        Assert.Equal(Sizes(theirs.Output), Sizes(ours.Output));
        CliResult text = Xendisk.Run("image", "measure", "-O", "qcow2", image);
        Assert.Contains("required size: ", text.Output);
        Assert.Contains("fully allocated size: ", text.Output);
    }
}
