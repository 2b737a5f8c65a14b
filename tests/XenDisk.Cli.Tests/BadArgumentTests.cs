using XenDisk.Cli.Tests.Support;

namespace XenDisk.Cli.Tests;

/// <summary>Every refusal is a clear line on stderr with exit code 2 (bad arguments) or 1 (the work failed), never a stack trace.</summary>
public sealed class BadArgumentTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    [Theory]
    [InlineData(2, "unknown image format 'vmdk'", "image", "create", "-f", "vmdk", "{dir}/x.img", "1G")]
    [InlineData(2, "invalid image size", "image", "create", "-f", "qcow2", "{dir}/x.qcow2", "12Q")]
    [InlineData(2, "invalid image size", "image", "create", "-f", "qcow2", "{dir}/x.qcow2", "ten")]
    [InlineData(2, "multiple of 512", "image", "create", "-f", "qcow2", "{dir}/x.qcow2", "1000")]
    [InlineData(2, "SIZE is required", "image", "create", "-f", "qcow2", "{dir}/x.qcow2")]
    [InlineData(2, "-F raw or -F qcow2", "image", "create", "-f", "qcow2", "-b", "base.raw", "{dir}/x.qcow2")]
    [InlineData(2, "needs its base", "image", "create", "-f", "bitmap", "{dir}/x.bitmap", "1M")]
    [InlineData(2, "unknown qcow2 option 'color'", "image", "create", "-f", "qcow2", "-o", "color=red", "{dir}/x.qcow2", "1M")]
    [InlineData(2, "cluster_size=3k", "image", "create", "-f", "qcow2", "-o", "cluster_size=3k", "{dir}/x.qcow2", "1M")]
    [InlineData(2, "Extended L2 entries need clusters", "image", "create", "-f", "qcow2", "-o", "cluster_size=4k,extended_l2=on", "{dir}/x.qcow2", "1M")]
    [InlineData(1, "does not exist", "image", "create", "-f", "qcow2", "-b", "missing.raw", "-F", "raw", "{dir}/x.qcow2")]
    [InlineData(2, "unknown image format 'qcow3'", "image", "info", "-f", "qcow3", "{dir}/missing.img")]
    [InlineData(1, "no such file", "image", "info", "{dir}/missing.img")]
    [InlineData(1, "no such file", "image", "check", "{dir}/missing.img")]
    [InlineData(1, "no such file", "image", "map", "{dir}/missing.img")]
    [InlineData(1, "is a directory", "image", "info", "{dir}")]
    [InlineData(1, "no such file", "io", "{dir}/missing.img", "-c", "read 0 4k")]
    [InlineData(2, "unknown command 'frobnicate'", "io", "{dir}/missing.img", "-c", "frobnicate 0 4k")]
    [InlineData(2, "needs an OFFSET and a LENGTH", "io", "{dir}/missing.img", "-c", "read 0")]
    [InlineData(2, "invalid length", "io", "{dir}/missing.img", "-c", "write 0 4q")]
    [InlineData(2, "-P needs a byte pattern", "io", "{dir}/missing.img", "-c", "write -P 300 0 4k")]
    [InlineData(2, "no command given", "io", "{dir}/missing.img")]
    [InlineData(2, "--rate", "image", "hydrate", "--rate", "fast", "{dir}/missing.img")]
    [InlineData(2, "--size", "bench", "cow", "--size", "lots")]
    [InlineData(2, "at least 4M", "bench", "cow", "--size", "1M")]
    [InlineData(2, "--only \"vmdk\" matches no configuration (configurations: qemu qcow2,", "bench", "cow", "--only", "vmdk")]
    [InlineData(2, "--io-threads 1 to 256", "bench", "storage", "--io-threads", "0")]
    [InlineData(2, "--io-threads 1 to 256", "bench", "iscsi", "iscsi://127.0.0.1/iqn.2026-01.test:x/0", "--overwrite", "--io-threads", "300")]
    [InlineData(2, "--only \"QD32 \" matches no configuration (configurations: raw-randrw-4k-qd32,", "bench", "storage", "--only", "raw", "--only", "QD32 ")]
    [InlineData(2, "matches no configuration (configurations: iscsi-seqread-4k-qd32,", "bench", "iscsi", "iscsi://127.0.0.1/iqn.2026-01.test:x/0", "--overwrite", "--only", "raw")]
    public void IsRefusedWithAMessage(int exitCode, string message, params string[] args)
    {
        string[] resolved = args.Select(a => a.Replace("{dir}", _dir.Path, StringComparison.Ordinal)).ToArray();

        CliResult result = Xendisk.Run(resolved);

        Assert.True(result.ExitCode == exitCode, result.ToString());
        Assert.Contains(message, result.Error);
        Assert.StartsWith("xendisk: ", result.Error);
        Xendisk.AssertNoStackTrace(result);
    }

    [Fact]
    public void Unaligned_io_is_refused_not_crashed()
    {
        string image = _dir.File("disk.raw");
        Assert.Equal(0, Xendisk.Run("image", "create", "-f", "raw", image, "1M").ExitCode);

        CliResult result = Xendisk.Run("io", image, "-c", "write 100 200");

        Assert.Equal(1, result.ExitCode);
        Assert.Contains("multiples of the disk's 512-byte sectors", result.Error);
        Xendisk.AssertNoStackTrace(result);
    }

    [Fact]
    public void Garbage_qcow2_info_is_refused_with_the_reason()
    {
        string image = _dir.File("garbage.qcow2");
        byte[] bytes = new byte[4096];
        "QFI"u8.CopyTo(bytes);
        bytes[3] = 0xfb;
        bytes[7] = 3;
        // cluster_bits 40: out of the spec's range.
        bytes[23] = 40;
        File.WriteAllBytes(image, bytes);

        CliResult result = Xendisk.Run("image", "info", image);

        Assert.Equal(1, result.ExitCode);
        Assert.StartsWith("xendisk: ", result.Error);
        Xendisk.AssertNoStackTrace(result);
    }

    [Fact]
    public void Unknown_option_is_a_parse_error_without_stack_trace()
    {
        string image = _dir.File("x");
        CliResult result = Xendisk.Run("image", "info", "--frobnicate", image);

        Assert.NotEqual(0, result.ExitCode);
        Assert.Contains("unknown option '--frobnicate'", result.Error);
        Assert.DoesNotContain(image, result.Error);
        Xendisk.AssertNoStackTrace(result);

        CliResult after = Xendisk.Run("image", "info", image, "--frobnicate");
        Assert.Equal(2, after.ExitCode);
        Assert.Contains("unknown option '--frobnicate'", after.Error);

        CliResult extra = Xendisk.Run("image", "info", image, "other");
        Assert.Equal(2, extra.ExitCode);
        Assert.Contains("unexpected argument 'other'", extra.Error);
    }

    /// <summary>An unknown option is one line naming it and a pointer to --help, for every verb; the help text itself is not printed.</summary>
    [Theory]
    [InlineData("xendisk image info", "image", "info", "--foo", "{dir}/x.img")]
    [InlineData("xendisk image info", "image", "info", "{dir}/x.img", "--foo")]
    [InlineData("xendisk image create", "image", "create", "--foo", "-f", "raw", "{dir}/x.img", "1M")]
    [InlineData("xendisk image unlock", "image", "unlock", "--foo", "iscsi://127.0.0.1/iqn.2000-01.test:t/0")]
    [InlineData("xendisk io", "io", "--foo", "{dir}/x.img", "-c", "read 0 4k")]
    [InlineData("xendisk status", "status", "--foo")]
    [InlineData("xendisk hydrate", "hydrate", "--foo")]
    [InlineData("xendisk bench cow", "bench", "cow", "--foo")]
    public void UnknownOption_IsOneLineAndAHint_NotTheHelpText(string command, params string[] args)
    {
        string[] resolved = args.Select(a => a.Replace("{dir}", _dir.Path, StringComparison.Ordinal)).ToArray();

        CliResult result = Xendisk.Run(resolved);

        Assert.True(result.ExitCode == 2, result.ToString());
        string[] lines = result.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(["xendisk: unknown option '--foo'", $"Try '{command} --help' for more information."], lines);
        Assert.Equal("", result.Output);
        Assert.DoesNotContain("Usage:", result.Error, StringComparison.Ordinal);
        Assert.False(File.Exists(_dir.File("x.img")));
    }

    [Fact]
    public void Help_is_still_printed()
    {
        CliResult result = Xendisk.Run("image", "info", "--help");

        Assert.Equal(0, result.ExitCode);
        Assert.Contains("Usage:", result.Output, StringComparison.Ordinal);
        Assert.Equal("", result.Error);
    }
}
