using System.Diagnostics;
using System.Text.Json;

namespace XenDisk.TestSupport;

/// <summary>
/// QEMU's own tools for interoperability tests: qemu-img and qemu-io run to completion, qemu-io held
/// open interactively, qemu-nbd to read a persistent bitmap as QEMU does or to leave an image as a
/// crashed QEMU would. These tests are the evidence that XenDisk's images are QEMU's images.
/// </summary>
public static class QemuTools
{
    public static string QemuImg => ProcessRunner.Find("qemu-img");

    public static string QemuIo => ProcessRunner.Find("qemu-io");

    public static string QemuNbd => ProcessRunner.Find("qemu-nbd");

    public static string Find(string tool) => ProcessRunner.Find(tool);

    /// <summary>Runs <paramref name="tool"/> (a name on PATH or a path) to completion.</summary>
    public static ProcessResult Run(string tool, params string[] args) => ProcessRunner.Run(tool, args);

    /// <summary>Runs <paramref name="tool"/>, fails the test unless it exits with 0, and returns everything it printed (stdout, then stderr).</summary>
    public static string RunOk(string tool, params string[] args)
    {
        ProcessResult result = ProcessRunner.RunOk(tool, args);
        return result.Output + result.Error;
    }

    /// <summary>
    /// Starts an interactive qemu-io on <paramref name="image"/> and returns once it has the image open
    /// (it has answered a "length" command, so its locks are taken). Disposing closes its stdin, which
    /// ends it, and waits for it to exit.
    /// </summary>
    public static InteractiveTool HoldWithQemuIo(string image, bool readOnly)
    {
        string[] args = readOnly ? ["-r", "-f", "qcow2", image] : ["-f", "qcow2", image];
        Process process = ProcessRunner.Start("qemu-io", args, redirectInput: true);
        InteractiveTool tool = new(process);
        process.StandardInput.WriteLine("length");
        process.StandardInput.Flush();
        // The answer to "length" is the first line qemu-io prints; an open failure ends it with stdout closed.
        string? line = process.StandardOutput.ReadLine();
        if (line == null || !line.Contains("iB", StringComparison.Ordinal))
        {
            tool.Dispose();
            Assert.Fail($"qemu-io did not open {image}: {line}\n{process.StandardError.ReadToEnd()}");
        }
        return tool;
    }

    public sealed class InteractiveTool(Process process) : IDisposable
    {
        public int ProcessId => process.Id;

        public void Dispose()
        {
            process.StandardInput.Close();
            if (!process.WaitForExit(TimeSpan.FromMinutes(1)))
            {
                process.Kill();
            }
            process.Dispose();
        }
    }

    /// <summary>
    /// The dirty ranges of a persistent bitmap as QEMU reads them from the file: qemu-nbd exports the
    /// image with the bitmap (-B), and qemu-img map reads the bitmap's NBD metadata context through
    /// the client's x-dirty-bitmap option, which reports dirty ranges as holes ("data": false).
    /// qemu-nbd --fork returns once it listens, and the server ends after its one client; this waits
    /// for that end, because until then the server holds the image's lock and a writer that comes
    /// next (qemu-img bitmap, qemu-io) would be refused.
    /// </summary>
    public static List<(long Offset, long Length)> DirtyRanges(string image, string bitmap)
    {
        string directory = Path.GetDirectoryName(image)!;
        // Its own socket per call: a server still ending after its client removes its socket file.
        string socket = Path.Combine(directory, $"nbd-{Guid.NewGuid():N}.sock");
        string pidFile = Path.Combine(directory, "nbd.pid");
        RunOk(QemuNbd, "--fork", "--pid-file", pidFile, "-r", "-f", "qcow2", "-B", bitmap, "-k", socket, image);
        using Process server = Process.GetProcessById(int.Parse(File.ReadAllText(pidFile).Trim()));
        string map = RunOk(QemuImg, "map", "--output=json", "--image-opts",
            $"driver=nbd,server.type=unix,server.path={socket},x-dirty-bitmap=qemu:dirty-bitmap:{bitmap}");
        Assert.True(server.WaitForExit(60_000), "qemu-nbd did not exit after its one client");
        List<(long, long)> ranges = [];
        using JsonDocument document = JsonDocument.Parse(map);
        foreach (JsonElement extent in document.RootElement.EnumerateArray())
        {
            if (!extent.GetProperty("data").GetBoolean())
            {
                ranges.Add((extent.GetProperty("start").GetInt64(), extent.GetProperty("length").GetInt64()));
            }
        }
        return ranges;
    }

    /// <summary>
    /// Leaves the image as a QEMU process that died while writing it would: qemu-nbd opens it
    /// writable (marking its bitmaps in use), then is killed. --fork returns once the image is open.
    /// </summary>
    public static void CrashWhileOpen(string image)
    {
        string directory = Path.GetDirectoryName(image)!;
        string pidFile = Path.Combine(directory, "nbd.pid");
        RunOk(QemuNbd, "--fork", "-f", "qcow2", "--pid-file", pidFile, "-k", Path.Combine(directory, "crash.sock"), image);
        using Process server = Process.GetProcessById(int.Parse(File.ReadAllText(pidFile).Trim()));
        server.Kill();
        Assert.True(server.WaitForExit(60_000), "qemu-nbd did not exit after SIGKILL");
    }
}
