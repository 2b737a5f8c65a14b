using System.Diagnostics;

namespace XenDisk.Cli.Tests.Support;

/// <summary>
/// Runs qemu-img and qemu-io for interoperability checks. A missing tool fails the test with the
/// package to install: these tests are the evidence that XenDisk's images are QEMU's images.
/// </summary>
public static class QemuTools
{
    public sealed record ToolResult(int ExitCode, string Output, string Error)
    {
        public override string ToString() => $"exit {ExitCode}\n--- stdout ---\n{Output}\n--- stderr ---\n{Error}";
    }

    public static ToolResult Run(string tool, params string[] args)
    {
        string path = Find(tool);
        ProcessStartInfo start = new(path)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(2)))
        {
            process.Kill();
            Assert.Fail($"{tool} {string.Join(' ', args)} did not finish within two minutes");
        }
        return new ToolResult(process.ExitCode, output.Result, error.Result);
    }

    public static string Find(string tool)
    {
        foreach (string directory in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':'))
        {
            string candidate = Path.Combine(directory, tool);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }
        Assert.Fail($"{tool} is not installed; these interoperability tests need it (apt-get install -y qemu-utils).");
        return "";
    }
}
