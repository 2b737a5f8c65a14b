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
