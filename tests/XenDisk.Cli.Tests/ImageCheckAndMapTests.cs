using System.Text.Json;
using XenDisk.Cli.Tests.Support;

namespace XenDisk.Cli.Tests;

[Trait(Needs.Key, Needs.Qemu)]
public sealed class ImageCheckAndMapTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private string ImageWithData(string extendedL2 = "off")
    {
        string image = _dir.File("disk.qcow2");
        Assert.Equal(0, Xendisk.Run("image", "create", "-f", "qcow2", "-o", $"extended_l2={extendedL2}", image, "4M").ExitCode);
        CliResult wrote = Xendisk.Run("io", image, "-c", "write -P 0x61 0 64k", "-c", "write -P 0x62 1M 64k");
        Assert.True(wrote.ExitCode == 0, wrote.ToString());
        return image;
    }

    [Fact]
    public void Clean_image_exits_zero()
    {
        string image = ImageWithData();

        CliResult result = Xendisk.Run("image", "check", image);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Contains("No errors were found on the image.", result.Output);
    }

    [Theory]
    [InlineData("off", "leaks")]
    [InlineData("on", "all")]
    public void Injected_leak_exits_three_repair_fixes_it_qemu_agrees(string extendedL2, string repairMode)
    {
        string image = ImageWithData(extendedL2);
        Qcow2Surgery.LeakFirstCluster(image);
        Assert.Equal(3, QemuTools.Run("qemu-img", "check", image).ExitCode);

        CliResult found = Xendisk.Run("image", "check", "--json", image);
        Assert.True(found.ExitCode == 3, found.ToString());
        using (JsonDocument json = JsonDocument.Parse(found.Output))
        {
            Assert.Equal(1, json.RootElement.GetProperty("leaks").GetInt32());
            Assert.Equal(0, json.RootElement.GetProperty("corruptions").GetInt32());
        }

        CliResult repaired = Xendisk.Run("image", "check", "-r", repairMode, image);
        Assert.True(repaired.ExitCode == 0, repaired.ToString());
        Assert.Contains("1 leaked clusters", repaired.Output);
        Assert.Equal(0, Xendisk.Run("image", "check", image).ExitCode);
        ProcessResult qemu = QemuTools.Run("qemu-img", "check", image);
        Assert.True(qemu.ExitCode == 0, qemu.ToString());
        // The untouched cluster still holds its data.
        Assert.Equal(0, Xendisk.Run("io", image, "-c", "read -P 0x62 1M 64k").ExitCode);
    }

    [Fact]
    public void Entry_pointing_beyond_the_file_exits_two_like_qemu_img()
    {
        string image = ImageWithData();
        Qcow2Surgery.PointFirstClusterBeyondEnd(image);

        CliResult result = Xendisk.Run("image", "check", image);

        Assert.True(result.ExitCode == 2, result.ToString());
        Assert.Contains("errors were found on the image", result.Output);
        Assert.Equal(2, QemuTools.Run("qemu-img", "check", image).ExitCode);
    }

    [Fact]
    public void Repair_leaks_only_leaves_a_corrupt_image_alone()
    {
        string image = ImageWithData();
        Qcow2Surgery.PointFirstClusterBeyondEnd(image);
        byte[] before = File.ReadAllBytes(image);

        CliResult result = Xendisk.Run("image", "check", "-r", "leaks", image);

        Assert.True(result.ExitCode == 2, result.ToString());
        Assert.Contains("repair it with -r all", result.Output);
        Assert.Equal(before, File.ReadAllBytes(image));
        Assert.NotEqual(0, Xendisk.Run("image", "check", "-r", "bogus", image).ExitCode);
    }

    [Fact]
    public void Output_json_is_a_synonym_of_json()
    {
        string image = ImageWithData();
        CliResult json = Xendisk.Run("image", "check", "--json", image);
        CliResult output = Xendisk.Run("image", "check", "--output=json", image);
        Assert.True(output.ExitCode == 0, output.ToString());
        Assert.Equal(json.Output, output.Output);
        CliResult info = Xendisk.Run("image", "info", "--output", "json", image);
        Assert.Equal("qcow2", JsonDocument.Parse(info.Output).RootElement.GetProperty("format").GetString());
        Assert.NotEqual(0, Xendisk.Run("image", "info", "--output=yaml", image).ExitCode);
    }

    [Fact]
    public void Not_a_qcow2_image_could_not_check_exits_one()
    {
        string image = _dir.File("fake.qcow2");
        byte[] bytes = new byte[65536];
        "QFI"u8.CopyTo(bytes);
        bytes[3] = 0xfb;
        // Version 99 (big-endian at byte 4): refused by the header reader.
        bytes[7] = 99;
        File.WriteAllBytes(image, bytes);

        CliResult result = Xendisk.Run("image", "check", image);

        Assert.Equal(1, result.ExitCode);
        Assert.Contains("cannot check", result.Error);
        Xendisk.AssertNoStackTrace(result);
    }

    [Fact]
    public void Raw_image_has_nothing_to_check()
    {
        string image = _dir.RawBase("disk.raw", 1 << 20);

        CliResult result = Xendisk.Run("image", "check", image);

        Assert.Equal(63, result.ExitCode);
        Assert.Contains("raw image", result.Error);
    }

    [Fact]
    public void Bitmap_overlay_clean_check()
    {
        _dir.RawBase("base.raw", 1 << 20);
        string overlay = _dir.File("over.bitmap");
        Assert.Equal(0, Xendisk.Run("image", "create", "-f", "bitmap", "-b", "base.raw", overlay).ExitCode);
        Assert.Equal(0, Xendisk.Run("io", overlay, "-c", "write -P 1 0 4k").ExitCode);

        CliResult result = Xendisk.Run("image", "check", "--json", overlay);

        Assert.True(result.ExitCode == 0, result.ToString());
        using JsonDocument json = JsonDocument.Parse(result.Output);
        Assert.Equal("bitmap", json.RootElement.GetProperty("format").GetString());
    }

    [Fact]
    public void Map_json_parses_and_covers_the_disk()
    {
        _dir.RawBase("base.raw", 4 << 20);
        string overlay = _dir.File("over.qcow2");
        Assert.Equal(0, Xendisk.Run("image", "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "-o", "extended_l2=off", overlay).ExitCode);
        Assert.Equal(0, Xendisk.Run("io", overlay, "-c", "write -P 7 0 64k", "-c", "write -z 2M 64k").ExitCode);

        CliResult result = Xendisk.Run("image", "map", "--json", overlay);

        Assert.True(result.ExitCode == 0, result.ToString());
        using JsonDocument json = JsonDocument.Parse(result.Output);
        JsonElement[] extents = json.RootElement.EnumerateArray().ToArray();
        Assert.Equal(0, extents[0].GetProperty("offset").GetInt64());
        Assert.Equal(65536, extents[0].GetProperty("length").GetInt64());
        Assert.Equal("data", extents[0].GetProperty("kind").GetString());
        Assert.True(extents[0].GetProperty("hostOffset").GetInt64() > 0);
        Assert.Equal("base", extents[1].GetProperty("kind").GetString());
        Assert.Contains(extents, e => e.GetProperty("kind").GetString() == "zero" && e.GetProperty("offset").GetInt64() == 2 << 20);
        long covered = 0;
        foreach (JsonElement extent in extents)
        {
            Assert.Equal(covered, extent.GetProperty("offset").GetInt64());
            covered += extent.GetProperty("length").GetInt64();
        }
        Assert.Equal(4L << 20, covered);
    }

    [Fact]
    public void Map_of_bitmap_overlay_shows_written_grains_as_data()
    {
        _dir.RawBase("base.raw", 1 << 20);
        string overlay = _dir.File("over.bitmap");
        Assert.Equal(0, Xendisk.Run("image", "create", "-f", "bitmap", "-b", "base.raw", overlay).ExitCode);
        Assert.Equal(0, Xendisk.Run("io", overlay, "-c", "write -P 1 8k 8k", "-c", "discard 64k 4k").ExitCode);

        CliResult result = Xendisk.Run("image", "map", overlay);

        Assert.True(result.ExitCode == 0, result.ToString());
        string[] lines = result.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.StartsWith("Offset", lines[0]);
        Assert.Matches(@"^0x0\s+0x2000\s+base", lines[1]);
        Assert.Matches(@"^0x2000\s+0x2000\s+data\s+0x", lines[2]);
        Assert.Contains(lines, l => System.Text.RegularExpressions.Regex.IsMatch(l, @"^0x10000\s+0x1000\s+zero"));
    }
}
