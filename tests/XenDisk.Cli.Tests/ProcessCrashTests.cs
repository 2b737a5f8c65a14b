using System.Diagnostics;
using XenDisk.Cli.Tests.Support;

namespace XenDisk.Cli.Tests;

/// <summary>
/// A crash of the process that serves a qcow2 overlay, as SIGKILL, the OOM killer or an abort end
/// the service while its guest keeps running: `xendisk io` in a child process writes to an overlay
/// made by qemu-img, prints each acknowledgement, and is killed with no flush after the last one.
/// Every acknowledged byte must then read back, through XenDisk and through qemu-io; QEMU's repair
/// of the dirty image finds nothing it cannot fix, and XenDisk writes on without calling it corrupt.
/// </summary>
[Trait(Needs.Key, Needs.Qemu)]
public sealed class ProcessCrashTests : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    /// <summary>(command, the pattern it leaves, offset, length): a whole cluster, a copy-up inside a cluster, several clusters, a new L2 table (64 KiB clusters: one table maps 512 MiB).</summary>
    private static readonly (string Command, byte Pattern, long Offset, int Length)[] Writes =
    [
        ("write -P 0x22 1M 4k", 0x22, 1 << 20, 4096),
        ("write -P 0x33 8M 192k", 0x33, 8 << 20, 192 << 10),
        ("write -P 0x44 1G 4k", 0x44, 1L << 30, 4096),
        ("write -P 0x55 1056k 64k", 0x55, 1056 << 10, 64 << 10),
    ];

    [Theory]
    [InlineData("flush", "off")]
    [InlineData("lazy", "on")]
    public async Task Writes_acknowledged_after_the_last_flush_survive_a_SIGKILL_of_the_process(string policy, string lazyRefcounts)
    {
        _dir.RawBase("base.raw", 16 << 20);
        string overlay = _dir.File("over.qcow2");
        QemuTools.RunOk(QemuTools.QemuImg, "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "-o", $"lazy_refcounts={lazyRefcounts}", overlay, "2G");

        List<string> commands = ["write -P 0x11 0 64k", "flush", .. Writes.Select(w => w.Command), "sleep 600000"];
        await RunAndKill(overlay, policy, commands, acknowledgements: commands.Count - 1);

        // qemu-io reads the dirty image as left behind (read-only: no repair yet).
        List<string> reads = ["read -P 0x11 0 64k", .. Writes.Select(w => $"read -P 0x{w.Pattern:x2} {w.Offset} {w.Length}")];
        // Copy-up kept the base around the 4 KiB write (sector 2056 holds the base's byte for it).
        reads.Add($"read -P 0x{RawImages.SectorByte(((1 << 20) + 4096) / 512):x2} {(1 << 20) + 4096} 512");
        List<string> qemuArguments = ["-r", "-f", "qcow2"];
        foreach (string read in reads)
        {
            qemuArguments.AddRange(["-c", read]);
        }
        ProcessResult qemuRead = QemuTools.Run(QemuTools.QemuIo, [.. qemuArguments, overlay]);
        Assert.True(qemuRead.ExitCode == 0 && !qemuRead.Output.Contains("verification failed", StringComparison.Ordinal), qemuRead.ToString());

        // QEMU repairs a dirty image when it opens it: on a copy, that repair must leave nothing behind.
        string copy = _dir.File("copy.qcow2");
        File.Copy(overlay, copy);
        ProcessResult repaired = QemuTools.Run(QemuTools.QemuImg, "check", "-r", "all", copy);
        Assert.True(repaired.ExitCode == 0, repaired.ToString());
        Assert.Equal(0, QemuTools.Run(QemuTools.QemuImg, "check", copy).ExitCode);

        // XenDisk, as the restarted service: every acknowledged byte, then new allocating writes
        // (which may take free clusters: none that an entry references), and a clean image at close.
        List<string> xendisk = ["io", overlay];
        foreach (string read in reads)
        {
            xendisk.AddRange(["-c", read]);
        }
        xendisk.AddRange(["-c", "write -P 0x66 4M 64k", "-c", "write -P 0x77 1073807360 4k"]);
        CliResult restarted = Xendisk.Run([.. xendisk]);
        Assert.True(restarted.ExitCode == 0, restarted.ToString());
        ProcessResult check = QemuTools.Run(QemuTools.QemuImg, "check", overlay);
        Assert.True(check.ExitCode == 0, check.ToString());
        // Neither the restart nor its allocations took the healthy image for a corrupt one; the clean close cleared the dirty bit.
        string info = QemuTools.RunOk(QemuTools.QemuImg, "info", "--output=json", overlay);
        Assert.Contains("\"corrupt\": false", info, StringComparison.Ordinal);
        Assert.DoesNotContain("\"dirty-flag\": true", info, StringComparison.Ordinal);
        ProcessResult after = QemuTools.Run(QemuTools.QemuIo, "-r", "-f", "qcow2", "-c", "read -P 0x44 1G 4k", "-c", "read -P 0x66 4M 64k", "-c", "read -P 0x33 8M 192k", overlay);
        Assert.True(after.ExitCode == 0 && !after.Output.Contains("verification failed", StringComparison.Ordinal), after.ToString());
    }

    /// <summary>The same for a bitmap overlay: its map blocks are in the file before each answer.</summary>
    [Theory]
    [InlineData("flush")]
    [InlineData("lazy")]
    public async Task A_bitmap_overlay_keeps_writes_acknowledged_after_the_last_flush_across_a_SIGKILL(string policy)
    {
        _dir.RawBase("base.raw", 16 << 20);
        string overlay = _dir.File("over.bitmap");
        CliResult created = Xendisk.Run("image", "create", "-f", "bitmap", "-b", "base.raw", overlay);
        Assert.True(created.ExitCode == 0, created.ToString());
        (string Command, byte Pattern, long Offset, int Length)[] writes =
        [
            ("write -P 0x22 1M 4k", 0x22, 1 << 20, 4096),
            ("write -P 0x33 8M 192k", 0x33, 8 << 20, 192 << 10),
            ("write -P 0x44 15M 1k", 0x44, 15 << 20, 1024),
        ];
        List<string> commands = ["write -P 0x11 0 64k", "flush", .. writes.Select(w => w.Command), "sleep 600000"];
        await RunAndKill(overlay, policy, commands, acknowledgements: commands.Count - 1);

        List<string> xendisk = ["io", overlay, "-c", "read -P 0x11 0 64k"];
        foreach ((_, byte pattern, long offset, int length) in writes)
        {
            xendisk.AddRange(["-c", $"read -P 0x{pattern:x2} {offset} {length}"]);
        }
        // The partly written grain kept the base's bytes around the 1 KiB write (copy-up).
        xendisk.AddRange(["-c", $"read -P 0x{RawImages.SectorByte(((15 << 20) + 1024) / 512):x2} {(15 << 20) + 1024} 512"]);
        xendisk.AddRange(["-c", "write -P 0x66 4M 64k", "-c", "read -P 0x66 4M 64k"]);
        CliResult restarted = Xendisk.Run([.. xendisk]);
        Assert.True(restarted.ExitCode == 0, restarted.ToString());
        CliResult check = Xendisk.Run("image", "check", overlay);
        Assert.True(check.ExitCode == 0, check.ToString());
    }

    /// <summary>Runs `xendisk io` in a child process and kills it (SIGKILL) once it printed <paramref name="acknowledgements"/> lines.</summary>
    private static async Task RunAndKill(string overlay, string policy, List<string> commands, int acknowledgements)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "xendisk.dll"));
        foreach (string argument in new[] { "io", "--policy", policy, overlay })
        {
            start.ArgumentList.Add(argument);
        }
        foreach (string command in commands)
        {
            start.ArgumentList.Add("-c");
            start.ArgumentList.Add(command);
        }
        var lines = new List<string>();
        var acknowledged = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using Process child = Process.Start(start)!;
        child.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null)
            {
                acknowledged.TrySetException(new InvalidOperationException("xendisk io ended before it acknowledged every write: " + string.Join("\n", lines)));
                return;
            }
            lock (lines)
            {
                lines.Add(e.Data);
                if (lines.Count == acknowledgements)
                {
                    acknowledged.TrySetResult();
                }
            }
        };
        child.BeginOutputReadLine();
        child.BeginErrorReadLine();
        try
        {
            await acknowledged.Task.WaitAsync(Timeout);
        }
        finally
        {
            child.Kill(); // SIGKILL: no flush, no close, no write-back
            Assert.True(child.WaitForExit(Timeout), "xendisk io did not exit after SIGKILL");
        }
        Assert.NotEqual(0, child.ExitCode);
        Assert.All(lines, line => Assert.True(line.StartsWith("wrote ", StringComparison.Ordinal) || line == "flush completed", line));
    }
}
