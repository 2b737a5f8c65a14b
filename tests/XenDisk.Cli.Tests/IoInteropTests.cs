using XenDisk.Cli.Tests.Support;

namespace XenDisk.Cli.Tests;

[Trait(Needs.Key, Needs.Qemu)]
public sealed class IoInteropTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private string Qcow2OverBase(string name = "over.qcow2", string extendedL2 = "on")
    {
        _dir.RawBase("base.raw", 4 << 20);
        string overlay = _dir.File(name);
        CliResult created = Xendisk.Run("image", "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "-o", $"extended_l2={extendedL2}", overlay);
        Assert.True(created.ExitCode == 0, created.ToString());
        return overlay;
    }

    [Theory]
    [InlineData("on")]
    [InlineData("off")]
    public void XenDisk_writes_qemu_io_verifies_the_pattern(string extendedL2)
    {
        string overlay = Qcow2OverBase(extendedL2: extendedL2);

        CliResult wrote = Xendisk.Run("io", overlay, "-c", "write -P 0xab 0 64k", "-c", "write -P 0x3c 68k 4k", "-c", "flush");
        Assert.True(wrote.ExitCode == 0, wrote.ToString());
        Assert.Contains("wrote 65536/65536 bytes at offset 0", wrote.Output);
        Assert.Contains("wrote 4096/4096 bytes at offset 69632", wrote.Output);

        ProcessResult read = QemuTools.Run("qemu-io", "-f", "qcow2",
            "-c", "read -P 0xab 0 64k", "-c", "read -P 0x3c 68k 4k", overlay);
        Assert.True(read.ExitCode == 0, read.ToString());
        Assert.DoesNotContain("verification failed", read.Output + read.Error, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("read 65536/65536 bytes at offset 0", read.Output);

        // The rest of the partially written cluster still reads the base (copy-up kept it): sector 136 holds its byte.
        byte baseByte = RawImages.SectorByte(72 * 1024 / 512);
        ProcessResult tail = QemuTools.Run("qemu-io", "-f", "qcow2", "-c", $"read -P 0x{baseByte:x2} 72k 512", overlay);
        Assert.True(tail.ExitCode == 0 && !tail.Output.Contains("verification failed", StringComparison.Ordinal), tail.ToString());

        Assert.Equal(0, QemuTools.Run("qemu-img", "check", overlay).ExitCode);
    }

    [Fact]
    public void Qemu_io_writes_XenDisk_io_verifies_the_pattern()
    {
        string overlay = Qcow2OverBase();
        ProcessResult wrote = QemuTools.Run("qemu-io", "-f", "qcow2", "-c", "write -P 0xcd 4k 8k", "-c", "write -z 1M 64k", overlay);
        Assert.True(wrote.ExitCode == 0, wrote.ToString());

        CliResult read = Xendisk.Run("io", overlay, "-c", "read -P 0xcd 4k 8k", "-c", "read -P 0 1M 64k");

        Assert.True(read.ExitCode == 0, read.ToString());
        Assert.Contains("read 8192/8192 bytes at offset 4096", read.Output);
        Assert.Contains("read 65536/65536 bytes at offset 1048576", read.Output);
    }

    [Fact]
    public void Read_pattern_mismatch_exits_non_zero_with_the_first_mismatching_offset()
    {
        string image = _dir.File("plain.qcow2");
        Assert.Equal(0, Xendisk.Run("image", "create", "-f", "qcow2", image, "1M").ExitCode);
        Assert.Equal(0, Xendisk.Run("io", image, "-c", "write -P 0xab 0 64k").ExitCode);

        CliResult result = Xendisk.Run("io", image, "-c", "read -P 0xab 0 128k");

        Assert.Equal(1, result.ExitCode);
        Assert.Contains("pattern verification failed at offset 65536", result.Error);
        Assert.Contains("found 0x00", result.Error);
        Xendisk.AssertNoStackTrace(result);
    }

    [Fact]
    public void Read_of_unwritten_overlay_returns_the_base()
    {
        string overlay = Qcow2OverBase();

        CliResult result = Xendisk.Run("io", overlay, "-c", $"read -P 0x{RawImages.SectorByte(8):x2} 4096 512");

        Assert.True(result.ExitCode == 0, result.ToString());
    }

    [Fact]
    public void Discard_and_zero_write_read_back_as_zeros_and_qemu_agrees()
    {
        string overlay = Qcow2OverBase();

        CliResult result = Xendisk.Run("io", overlay,
            "-c", "write -P 0x55 0 256k",
            "-c", "discard 0 64k",
            "-c", "write -z 128k 64k",
            "-c", "read -P 0 0 64k",
            "-c", "read -P 0x55 64k 64k",
            "-c", "read -P 0 128k 64k",
            "-c", "flush");

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Contains("discard 65536/65536 bytes at offset 0", result.Output);
        Assert.Contains("flush completed", result.Output);
        ProcessResult qemu = QemuTools.Run("qemu-io", "-f", "qcow2", "-c", "read -P 0 0 64k", "-c", "read -P 0x55 192k 64k", overlay);
        Assert.True(qemu.ExitCode == 0 && !qemu.Output.Contains("verification failed", StringComparison.Ordinal), qemu.ToString());
    }

    [Fact]
    public void Bitmap_overlay_writes_and_reads_through_its_base()
    {
        _dir.RawBase("base.raw", 2 << 20);
        string overlay = _dir.File("over.bitmap");
        Assert.Equal(0, Xendisk.Run("image", "create", "-f", "bitmap", "-b", "base.raw", overlay).ExitCode);

        CliResult result = Xendisk.Run("io", overlay,
            "-c", "write -P 0x42 8k 4k",
            "-c", "read -P 0x42 8k 4k",
            "-c", $"read -P 0x{RawImages.SectorByte(24):x2} 12k 512");

        Assert.True(result.ExitCode == 0, result.ToString());
        CliResult again = Xendisk.Run("io", "-f", "bitmap", overlay, "-c", "read -P 0x42 8k 4k");
        Assert.True(again.ExitCode == 0, again.ToString());
    }

    [Fact]
    public void Raw_image_write_then_read()
    {
        string image = _dir.File("disk.raw");
        Assert.Equal(0, Xendisk.Run("image", "create", "-f", "raw", image, "1M").ExitCode);

        CliResult result = Xendisk.Run("io", image, "-c", "write -P 0x9 512 1k", "-c", "read -P 9 512 1k", "-c", "read -P 0 0 512");

        Assert.True(result.ExitCode == 0, result.ToString());
        ProcessResult qemu = QemuTools.Run("qemu-io", "-f", "raw", "-c", "read -P 9 512 1k", image);
        Assert.True(qemu.ExitCode == 0 && !qemu.Output.Contains("verification failed", StringComparison.Ordinal), qemu.ToString());
    }

    [Fact]
    public void Backing_file_outside_the_image_directory_is_followed_only_with_allow_base()
    {
        using TempDirectory baseDir = new();
        string basePath = baseDir.RawBase("golden.raw", 1 << 20);
        string overlay = _dir.File("over.qcow2");
        Assert.Equal(0, Xendisk.Run("image", "create", "-f", "qcow2", "-b", basePath, "-F", "raw", overlay).ExitCode);

        CliResult refused = Xendisk.Run("io", overlay, "-c", "read 0 4k");
        Assert.Equal(1, refused.ExitCode);
        Assert.Contains("--allow-base", refused.Error);
        Xendisk.AssertNoStackTrace(refused);

        CliResult allowed = Xendisk.Run("io", overlay, "--allow-base", baseDir.Path, "-c", $"read -P 0x{RawImages.SectorByte(0):x2} 0 512");
        Assert.True(allowed.ExitCode == 0, allowed.ToString());
    }

    [Fact]
    public void One_failing_command_fails_the_run_but_the_others_still_run()
    {
        string image = _dir.File("disk.raw");
        Assert.Equal(0, Xendisk.Run("image", "create", "-f", "raw", image, "1M").ExitCode);

        CliResult result = Xendisk.Run("io", image, "-c", "read 1M 4k", "-c", "write -P 1 0 4k");

        Assert.Equal(1, result.ExitCode);
        Assert.Contains("beyond the end of the disk", result.Error);
        Assert.Contains("wrote 4096/4096 bytes at offset 0", result.Output);
    }

    [Fact]
    public void A_write_onto_metadata_fails_with_its_reason_and_the_corrupt_image_still_reads()
    {
        // The L1 table's refcount set to 0 (qemu-img's layout: refcount block at 0x20000, L1 table in cluster 3).
        string image = _dir.File("img.qcow2");
        Assert.Equal(0, QemuTools.Run("qemu-img", "create", "-q", "-f", "qcow2", image, "16M").ExitCode);
        Assert.Equal(0, QemuTools.Run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 128k", "-c", "write -P 0x22 1M 64k", image).ExitCode);
        using (FileStream file = new(image, FileMode.Open, FileAccess.ReadWrite))
        {
            file.Position = 0x20000 + 6;
            file.Write([0, 0]);
        }

        CliResult write = Xendisk.Run("io", image, "-c", "write -P 0x62 4M 64k", "-c", "flush");

        Assert.Equal(1, write.ExitCode);
        Assert.Contains("write failed at offset 4194304 (I/O error: image corruption:", write.Error);
        Assert.Contains("holds the L1 table", write.Error);
        CliResult read = Xendisk.Run("io", image, "-c", "read -P 0x22 1M 64k", "-c", "read -P 0x11 0 128k");
        Assert.True(read.ExitCode == 0, read.ToString());
        CliResult again = Xendisk.Run("io", image, "-c", "write -P 0x62 4M 64k");
        Assert.Equal(1, again.ExitCode);
        Assert.Contains("corrupt bit", again.Error);
    }
}
