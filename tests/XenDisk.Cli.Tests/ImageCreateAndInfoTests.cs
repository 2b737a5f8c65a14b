using System.Text.Json;
using XenDisk.Cli.Tests.Support;

namespace XenDisk.Cli.Tests;

[Trait(Needs.Key, Needs.Qemu)]
public sealed class ImageCreateAndInfoTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public void Qcow2_over_raw_base_qemu_img_info_agrees_on_format_size_and_backing()
    {
        _dir.RawBase("base.raw", 8 << 20);
        string overlay = _dir.File("over.qcow2");

        CliResult created = Xendisk.Run("image", "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", overlay);
        Assert.True(created.ExitCode == 0, created.ToString());
        Assert.Contains("fmt=qcow2", created.Output);

        ProcessResult info = QemuTools.Run("qemu-img", "info", "--output=json", overlay);
        Assert.True(info.ExitCode == 0, info.ToString());
        using JsonDocument json = JsonDocument.Parse(info.Output);
        JsonElement root = json.RootElement;
        Assert.Equal("qcow2", root.GetProperty("format").GetString());
        Assert.Equal(8L << 20, root.GetProperty("virtual-size").GetInt64());
        Assert.Equal("base.raw", root.GetProperty("backing-filename").GetString());
        Assert.Equal("raw", root.GetProperty("backing-filename-format").GetString());
        Assert.Equal(_dir.File("base.raw"), root.GetProperty("full-backing-filename").GetString());

        ProcessResult check = QemuTools.Run("qemu-img", "check", overlay);
        Assert.True(check.ExitCode == 0, check.ToString());
    }

    [Fact]
    public void Qcow2_with_explicit_size_and_options_qemu_img_sees_them()
    {
        string image = _dir.File("plain.qcow2");

        CliResult created = Xendisk.Run("image", "create", "-f", "qcow2", "-o", "cluster_size=128k,lazy_refcounts=on", image, "1G");
        Assert.True(created.ExitCode == 0, created.ToString());

        ProcessResult info = QemuTools.Run("qemu-img", "info", "--output=json", image);
        using JsonDocument json = JsonDocument.Parse(info.Output);
        Assert.Equal(1L << 30, json.RootElement.GetProperty("virtual-size").GetInt64());
        Assert.Equal(128 * 1024, json.RootElement.GetProperty("cluster-size").GetInt32());
        JsonElement data = json.RootElement.GetProperty("format-specific").GetProperty("data");
        Assert.True(data.GetProperty("lazy-refcounts").GetBoolean());
        Assert.False(json.RootElement.TryGetProperty("backing-filename", out _));
    }

    [Fact]
    public void Info_json_describes_a_qemu_made_overlay()
    {
        _dir.RawBase("base.raw", 4 << 20);
        string overlay = _dir.File("q.qcow2");
        ProcessResult made = QemuTools.Run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "-o", "extended_l2=on", overlay);
        Assert.True(made.ExitCode == 0, made.ToString());
        Assert.Equal(0, QemuTools.Run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 128k", overlay).ExitCode);

        CliResult info = Xendisk.Run("image", "info", "--json", overlay);
        Assert.True(info.ExitCode == 0, info.ToString());
        using JsonDocument json = JsonDocument.Parse(info.Output);
        JsonElement root = json.RootElement;
        Assert.Equal("qcow2", root.GetProperty("format").GetString());
        Assert.Equal(4L << 20, root.GetProperty("virtualSize").GetInt64());
        Assert.Equal(65536, root.GetProperty("clusterSize").GetInt32());
        Assert.Equal("base.raw", root.GetProperty("backingFile").GetString());
        Assert.Equal("raw", root.GetProperty("backingFormat").GetString());
        Assert.Equal(128 * 1024, root.GetProperty("allocatedBytes").GetInt64());
        Assert.True(root.GetProperty("extendedL2").GetBoolean());
        Assert.Contains("extended_l2", root.GetProperty("features").EnumerateArray().Select(e => e.GetString()));
        Assert.False(root.GetProperty("dirty").GetBoolean());
        Assert.False(root.GetProperty("corrupt").GetBoolean());
        // 16384 clusters per GiB: 16-byte extended L2 entries and 16-bit refcounts.
        Assert.Equal(16384L * 16 + 16384L * 2, root.GetProperty("metadataBytesPerGiB").GetInt64());
    }

    [Fact]
    public void Bitmap_overlay_create_then_info_text()
    {
        string basePath = _dir.RawBase("base.raw", 4 << 20);
        string overlay = _dir.File("over.bitmap");

        CliResult created = Xendisk.Run("image", "create", "-f", "bitmap", "-b", "base.raw", "-o", "grain=8k", overlay);
        Assert.True(created.ExitCode == 0, created.ToString());

        CliResult info = Xendisk.Run("image", "info", overlay);
        Assert.True(info.ExitCode == 0, info.ToString());
        Assert.Contains("file format: bitmap", info.Output);
        Assert.Contains("virtual size: 4 MiB (4194304 bytes)", info.Output);
        Assert.Contains("grain_size: 8192", info.Output);
        Assert.Contains($"backing file: {basePath}", info.Output);
        Assert.Contains("allocated: 0 B", info.Output);
    }

    [Fact]
    public void Raw_image_info_reports_its_size()
    {
        string image = _dir.File("disk.raw");
        Assert.Equal(0, Xendisk.Run("image", "create", "-f", "raw", image, "3M").ExitCode);

        CliResult info = Xendisk.Run("image", "info", "--json", image);
        using JsonDocument json = JsonDocument.Parse(info.Output);
        Assert.Equal("raw", json.RootElement.GetProperty("format").GetString());
        Assert.Equal(3L << 20, json.RootElement.GetProperty("virtualSize").GetInt64());
    }

    [Fact]
    public void Existing_file_is_not_overwritten()
    {
        string image = _dir.RawBase("keep.raw", 1 << 20, fill: 0x77);

        CliResult result = Xendisk.Run("image", "create", "-f", "qcow2", image, "1M");

        Assert.Equal(1, result.ExitCode);
        Assert.Contains("already exists", result.Error);
        Assert.All(File.ReadAllBytes(image), b => Assert.Equal(0x77, b));
    }
}
