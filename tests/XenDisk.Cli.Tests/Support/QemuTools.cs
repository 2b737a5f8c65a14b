using System.Diagnostics;

namespace XenDisk.Cli.Tests.Support;

/// <summary>
/// Runs qemu-img and qemu-io for interoperability checks (the tests' one process runner), to completion
/// or held open interactively. A missing tool fails the test with the
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
        using Process process = Process.Start(StartInfo(tool, args, interactive: false))!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(2)))
        {
            process.Kill();
            Assert.Fail($"{tool} {string.Join(' ', args)} did not finish within two minutes");
        }
        return new ToolResult(process.ExitCode, output.Result, error.Result);
    }

    /// <summary>
    /// Starts an interactive qemu-io on <paramref name="image"/> and returns once it has the image open
    /// (it has answered a "length" command, so its locks are taken). Disposing closes its stdin, which
    /// ends it, and waits for it to exit.
    /// </summary>
    public static InteractiveTool HoldWithQemuIo(string image, bool readOnly)
    {
        string[] args = readOnly ? ["-r", "-f", "qcow2", image] : ["-f", "qcow2", image];
        Process process = Process.Start(StartInfo("qemu-io", args, interactive: true))!;
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

    private static ProcessStartInfo StartInfo(string tool, string[] args, bool interactive)
    {
        ProcessStartInfo start = new(Find(tool))
        {
            RedirectStandardInput = interactive,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        return start;
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
