using System.Diagnostics;

namespace XenDisk.Cow.Tests.Qcow2.Support;

/// <summary>
/// Runs qemu-img and qemu-io for interoperability tests. A missing tool fails the test with a clear
/// message (CI installs qemu-utils); it never skips silently.
/// </summary>
public static class QemuTools
{
    public static string QemuImg => Find("qemu-img");

    public static string QemuIo => Find("qemu-io");

    public static string QemuNbd => Find("qemu-nbd");

    /// <summary>
    /// The dirty ranges of a persistent bitmap as QEMU reads them from the file: qemu-nbd exports the
    /// image with the bitmap (-B), and qemu-img map reads the bitmap's NBD metadata context through
    /// the client's x-dirty-bitmap option, which reports dirty ranges as holes ("data": false).
    /// qemu-nbd --fork returns once it listens, and the server ends after its one client. Each call
    /// has its own socket: a server that is still ending after its client removes its socket file,
    /// which would be the next call's if the name were shared.
    /// </summary>
    public static List<(long Offset, long Length)> DirtyRanges(string image, string bitmap)
    {
        string socket = System.IO.Path.Combine(System.IO.Path.GetDirectoryName(image)!, $"nbd-{Guid.NewGuid():N}.sock");
        RunOk(QemuNbd, "--fork", "-r", "-f", "qcow2", "-B", bitmap, "-k", socket, image);
        string map = RunOk(QemuImg, "map", "--output=json", "--image-opts",
            $"driver=nbd,server.type=unix,server.path={socket},x-dirty-bitmap=qemu:dirty-bitmap:{bitmap}");
        List<(long, long)> ranges = [];
        using System.Text.Json.JsonDocument document = System.Text.Json.JsonDocument.Parse(map);
        foreach (System.Text.Json.JsonElement extent in document.RootElement.EnumerateArray())
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
        string directory = System.IO.Path.GetDirectoryName(image)!;
        string pidFile = System.IO.Path.Combine(directory, "nbd.pid");
        RunOk(QemuNbd, "--fork", "-f", "qcow2", "--pid-file", pidFile, "-k", System.IO.Path.Combine(directory, "crash.sock"), image);
        using Process server = Process.GetProcessById(int.Parse(File.ReadAllText(pidFile).Trim()));
        server.Kill();
        Assert.True(server.WaitForExit(60_000), "qemu-nbd did not exit after SIGKILL");
    }

    public static (int ExitCode, string Output) Run(string tool, params string[] arguments)
    {
        ProcessStartInfo start = new(tool) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }
        using Process process = Process.Start(start)!;
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(120_000))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{tool} {string.Join(' ', arguments)} did not finish within two minutes");
        }
        return (process.ExitCode, stdout.Result + stderr.Result);
    }

    public static string RunOk(string tool, params string[] arguments)
    {
        (int exitCode, string output) = Run(tool, arguments);
        Assert.True(exitCode == 0, $"{Path.GetFileName(tool)} {string.Join(' ', arguments)} exited with {exitCode}:\n{output}");
        return output;
    }

    private static string Find(string name)
    {
        foreach (string directory in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':'))
        {
            string candidate = Path.Combine(directory, name);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }
        Assert.Fail($"{name} is not installed: the qcow2 interoperability tests need QEMU's tools (apt-get install qemu-utils).");
        return name;
    }
}

/// <summary>A temporary directory removed after the test.</summary>
public sealed class TempDirectory : IDisposable
{
    public TempDirectory()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "xendisk-cow-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
