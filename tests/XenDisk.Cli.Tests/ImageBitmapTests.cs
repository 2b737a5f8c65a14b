using System.Text.Json;
using XenDisk.Cli.Tests.Support;

namespace XenDisk.Cli.Tests;

/// <summary>
/// `xendisk image bitmap` and the bitmaps in `image info`, against qemu-img bitmap and qemu-img info
/// on the same files, both ways (docs/interop/qcow2.txt == Bitmaps ==).
/// </summary>
[Trait(Needs.Key, Needs.Qemu)]
public sealed class ImageBitmapTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private static void Ok(CliResult result) => Assert.True(result.ExitCode == 0, result.ToString());

    private static void QemuOk(params string[] args)
    {
        ProcessResult result = QemuTools.Run(args[0], args[1..]);
        Assert.True(result.ExitCode == 0, result.ToString());
    }

    [Fact]
    public void Bitmaps_added_by_xendisk_track_qemu_and_xendisk_writes()
    {
        string image = _dir.File("disk.qcow2");
        QemuOk("qemu-img", "create", "-q", "-f", "qcow2", image, "64M");
        Ok(Xendisk.Run("image", "bitmap", "--add", "-g", "4096", image, "fine"));
        Ok(Xendisk.Run("image", "bitmap", "--add", image, "coarse"));
        QemuOk("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 1M 4k", image);
        Ok(Xendisk.Run("io", image, "-c", "write -P 0x22 8M 4k", "-c", "flush"));

        Assert.Contains("No errors", QemuTools.Run("qemu-img", "check", image).Output);
        Assert.Equal([(1L << 20, 4096L), (8L << 20, 4096L)], QemuTools.DirtyRanges(image, "fine"));
        Assert.Equal([(1L << 20, 65536L), (8L << 20, 65536L)], QemuTools.DirtyRanges(image, "coarse"));
        Assert.Equal([("fine", 4096L, "auto"), ("coarse", 65536L, "auto")], QemuBitmaps(image));
    }

    [Fact]
    public void Operations_on_qemu_bitmaps_are_what_qemu_img_bitmap_would_do()
    {
        string image = _dir.File("disk.qcow2");
        QemuOk("qemu-img", "create", "-q", "-f", "qcow2", image, "64M");
        QemuOk("qemu-img", "bitmap", "--add", image, "a");
        QemuOk("qemu-img", "bitmap", "--add", image, "b");
        QemuOk("qemu-img", "bitmap", "--add", image, "gone");
        QemuOk("qemu-io", "-f", "qcow2", "-c", "write 2M 64k", image);
        QemuOk("qemu-img", "bitmap", "--clear", image, "b");
        QemuOk("qemu-io", "-f", "qcow2", "-c", "write 5M 64k", image);

        // In the order given, as qemu-img: a new bitmap, disabled at once; merge a into it; others changed.
        Ok(Xendisk.Run("image", "bitmap", "--add", "--disable", "--merge", "a", image, "copy"));
        Ok(Xendisk.Run("image", "bitmap", "--remove", image, "gone"));
        Ok(Xendisk.Run("image", "bitmap", "--disable", "--clear", image, "b"));

        Assert.Contains("No errors", QemuTools.Run("qemu-img", "check", image).Output);
        Assert.Equal([("a", 65536L, "auto"), ("b", 65536L, ""), ("copy", 65536L, "")], QemuBitmaps(image));
        Assert.Equal([(2L << 20, 65536L), (5L << 20, 65536L)], QemuTools.DirtyRanges(image, "copy"));
        Assert.Empty(QemuTools.DirtyRanges(image, "b"));

        // And back: QEMU changes what xendisk made, and xendisk's info shows it as qemu-img info does.
        QemuOk("qemu-img", "bitmap", "--enable", image, "copy");
        QemuOk("qemu-io", "-f", "qcow2", "-c", "write 9M 4k", image);
        Assert.Equal([(2L << 20, 65536L), (5L << 20, 65536L), (9L << 20, 65536L)], QemuTools.DirtyRanges(image, "copy"));
        CliResult info = Xendisk.Run("image", "info", "--output=json", image);
        Ok(info);
        using JsonDocument json = JsonDocument.Parse(info.Output);
        List<(string, long, string)> listed = json.RootElement.GetProperty("bitmaps").EnumerateArray()
            .Select(b => (b.GetProperty("name").GetString()!, b.GetProperty("granularity").GetInt64(), string.Join(",", b.GetProperty("flags").EnumerateArray().Select(f => f.GetString()))))
            .ToList();
        Assert.Equal(QemuBitmaps(image), listed);
        CliResult text = Xendisk.Run("image", "info", image);
        Assert.Contains("    bitmaps:\n        [0]:\n            flags:\n                [0]: auto\n            name: a\n            granularity: 65536\n", text.Output);
    }

    [Fact]
    public void Refusals_name_what_is_wrong()
    {
        string image = _dir.File("disk.qcow2");
        QemuOk("qemu-img", "create", "-q", "-f", "qcow2", image, "64M");
        QemuOk("qemu-img", "bitmap", "--add", image, "a");
        CliResult missing = Xendisk.Run("image", "bitmap", "--clear", image, "nope");
        Assert.NotEqual(0, missing.ExitCode);
        Assert.Contains("no bitmap 'nope'", missing.Error);
        CliResult twice = Xendisk.Run("image", "bitmap", "--add", image, "a");
        Assert.Contains("'a' already exists", twice.Error);
        CliResult granularity = Xendisk.Run("image", "bitmap", "--add", "-g", "1000", image, "odd");
        Assert.Contains("not a power of two", granularity.Error);
        CliResult none = Xendisk.Run("image", "bitmap", image, "a");
        Assert.Contains("need at least one of", none.Error);
        // Nothing was changed by the refusals.
        Assert.Equal([("a", 65536L, "auto")], QemuBitmaps(image));
        Assert.Contains("No errors", QemuTools.Run("qemu-img", "check", image).Output);
    }

    private static List<(string, long, string)> QemuBitmaps(string image)
    {
        ProcessResult info = QemuTools.Run("qemu-img", "info", "--output=json", image);
        using JsonDocument json = JsonDocument.Parse(info.Output);
        JsonElement data = json.RootElement.GetProperty("format-specific").GetProperty("data");
        return !data.TryGetProperty("bitmaps", out JsonElement bitmaps) ? [] : bitmaps.EnumerateArray()
            .Select(b => (b.GetProperty("name").GetString()!, b.GetProperty("granularity").GetInt64(), string.Join(",", b.GetProperty("flags").EnumerateArray().Select(f => f.GetString()))))
            .ToList();
    }
}
