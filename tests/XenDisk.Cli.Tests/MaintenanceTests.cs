using System.Text.Json;
using XenDisk.Cli.Tests.Support;

namespace XenDisk.Cli.Tests;

[Trait(Needs.Key, Needs.Qemu)]
public sealed class MaintenanceTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private static void Ok(CliResult result) => Assert.True(result.ExitCode == 0, result.ToString());

    private static void QemuReads(string image, string command)
    {
        ProcessResult read = QemuTools.Run("qemu-io", "-f", "qcow2", "-c", command, image);
        Assert.True(read.ExitCode == 0 && !read.Output.Contains("verification failed", StringComparison.Ordinal), read.ToString());
    }

    [Fact]
    public void Snapshot_stacks_a_new_overlay_that_qemu_follows()
    {
        _dir.RawBase("base.raw", 2 << 20);
        string first = _dir.File("first.qcow2");
        string second = _dir.File("second.qcow2");
        Ok(Xendisk.Run("image", "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", first));
        Ok(Xendisk.Run("io", first, "-c", "write -P 0x21 0 64k"));

        Ok(Xendisk.Run("image", "snapshot", first, second));
        Ok(Xendisk.Run("io", second, "-c", "write -P 0x22 64k 64k"));

        ProcessResult info = QemuTools.Run("qemu-img", "info", "--output=json", second);
        using (JsonDocument json = JsonDocument.Parse(info.Output))
        {
            Assert.Equal("first.qcow2", json.RootElement.GetProperty("backing-filename").GetString());
            Assert.Equal("qcow2", json.RootElement.GetProperty("backing-filename-format").GetString());
        }
        QemuReads(second, "read -P 0x21 0 64k");
        QemuReads(second, "read -P 0x22 64k 64k");
        // The frozen image did not change.
        Ok(Xendisk.Run("io", first, "-c", $"read -P 0x{RawImages.SectorByte(128):x2} 64k 512"));
    }

    [Fact]
    public void Commit_writes_the_overlay_into_its_base_and_empties_it()
    {
        string basePath = _dir.RawBase("base.raw", 2 << 20);
        string overlay = _dir.File("over.qcow2");
        Ok(Xendisk.Run("image", "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", overlay));
        Ok(Xendisk.Run("io", overlay, "-c", "write -P 0x31 128k 8k"));

        CliResult commit = Xendisk.Run("image", "commit", "--json", overlay);

        Ok(commit);
        using (JsonDocument json = JsonDocument.Parse(commit.Output))
        {
            Assert.Equal("commit", json.RootElement.GetProperty("operation").GetString());
        }
        Ok(Xendisk.Run("io", basePath, "-c", "read -P 0x31 128k 8k"));
        CliResult map = Xendisk.Run("image", "map", "--json", overlay);
        using JsonDocument extents = JsonDocument.Parse(map.Output);
        Assert.All(extents.RootElement.EnumerateArray(), e => Assert.Equal("base", e.GetProperty("kind").GetString()));
    }

    [Fact]
    public void Hydrate_makes_the_overlay_standalone_with_the_same_contents()
    {
        _dir.RawBase("base.raw", 2 << 20);
        string overlay = _dir.File("over.qcow2");
        Ok(Xendisk.Run("image", "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", overlay));
        Ok(Xendisk.Run("io", overlay, "-c", "write -P 0x41 0 4k"));

        Ok(Xendisk.Run("image", "hydrate", "--rate", "1G", overlay));

        File.Delete(_dir.File("base.raw"));
        CliResult info = Xendisk.Run("image", "info", "--json", overlay);
        using (JsonDocument json = JsonDocument.Parse(info.Output))
        {
            Assert.False(json.RootElement.TryGetProperty("backingFile", out _));
        }
        Ok(Xendisk.Run("io", overlay, "-c", "read -P 0x41 0 4k", "-c", $"read -P 0x{RawImages.SectorByte(2047):x2} {2047 * 512} 512"));
        Assert.Equal(0, QemuTools.Run("qemu-img", "check", overlay).ExitCode);
    }

    [Fact]
    public void Rebase_unsafe_only_rewrites_the_name_safe_copies_the_difference()
    {
        _dir.RawBase("old.raw", 1 << 20);
        _dir.RawBase("new.raw", 1 << 20, fill: 0xee);
        string overlay = _dir.File("over.qcow2");
        Ok(Xendisk.Run("image", "create", "-f", "qcow2", "-b", "old.raw", "-F", "raw", overlay));

        Ok(Xendisk.Run("image", "rebase", "-b", "new.raw", "-F", "raw", overlay));
        // Safe: the overlay still reads the old base's bytes, now copied into it.
        Ok(Xendisk.Run("io", overlay, "-c", $"read -P 0x{RawImages.SectorByte(5):x2} {5 * 512} 512"));

        Ok(Xendisk.Run("image", "rebase", "-u", "-b", "old.raw", "-F", "raw", overlay));
        ProcessResult info = QemuTools.Run("qemu-img", "info", "--output=json", overlay);
        using JsonDocument json = JsonDocument.Parse(info.Output);
        Assert.Equal("old.raw", json.RootElement.GetProperty("backing-filename").GetString());
    }

    [Fact]
    public void Bitmap_overlay_hydrate_then_commit()
    {
        string basePath = _dir.RawBase("base.raw", 1 << 20);
        string overlay = _dir.File("over.bitmap");
        Ok(Xendisk.Run("image", "create", "-f", "bitmap", "-b", "base.raw", overlay));
        Ok(Xendisk.Run("io", overlay, "-c", "write -P 0x51 4k 4k"));

        Ok(Xendisk.Run("image", "commit", "-d", overlay));
        Ok(Xendisk.Run("io", basePath, "-c", "read -P 0x51 4k 4k"));

        Ok(Xendisk.Run("image", "hydrate", overlay));
        CliResult info = Xendisk.Run("image", "info", "--json", overlay);
        using JsonDocument json = JsonDocument.Parse(info.Output);
        Assert.True(json.RootElement.GetProperty("standalone").GetBoolean());
        Assert.Equal(1L << 20, json.RootElement.GetProperty("allocatedBytes").GetInt64());
    }

    [Fact]
    public void Snapshot_of_a_bitmap_overlay_is_refused()
    {
        _dir.RawBase("base.raw", 1 << 20);
        string overlay = _dir.File("over.bitmap");
        Ok(Xendisk.Run("image", "create", "-f", "bitmap", "-b", "base.raw", overlay));

        CliResult result = Xendisk.Run("image", "snapshot", overlay, _dir.File("next.qcow2"));

        Assert.Equal(2, result.ExitCode);
        Assert.Contains("snapshots stack qcow2 overlays", result.Error);
    }

    [Fact]
    public void Hydrate_refuses_a_backing_link_that_leads_outside_the_allowed_directories()
    {
        using TempDirectory elsewhere = new();
        string secret = elsewhere.RawBase("secret.raw", 1 << 20, fill: 0x5e);
        File.CreateSymbolicLink(_dir.File("base.raw"), secret);
        string overlay = _dir.File("over.qcow2");
        ProcessResult made = QemuTools.Run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", overlay);
        Assert.True(made.ExitCode == 0, made.ToString());

        CliResult refused = Xendisk.Run("image", "hydrate", overlay);

        Assert.Equal(1, refused.ExitCode);
        Assert.Contains($"--allow-base {elsewhere.Path}", refused.Error);
        Xendisk.AssertNoStackTrace(refused);
        Ok(Xendisk.Run("image", "hydrate", "--allow-base", elsewhere.Path, overlay));
        Ok(Xendisk.Run("io", overlay, "-c", "read -P 0x5e 0 64k"));
    }
}
