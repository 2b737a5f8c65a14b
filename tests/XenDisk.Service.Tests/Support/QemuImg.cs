using System.Diagnostics;

namespace XenDisk.Service.Tests.Support;

/// <summary>
/// Runs qemu-img for interoperability checks. A missing qemu-img fails the test with the package to
/// install: an overlay QEMU cannot check is not evidence of anything.
/// </summary>
internal static class QemuImg
{
    public sealed record Result(int ExitCode, string Output, string Error)
    {
        public override string ToString() => $"exit {ExitCode}\n--- stdout ---\n{Output}\n--- stderr ---\n{Error}";
    }

    public static Result Run(params string[] args)
    {
        string? path = (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':')
            .Select(directory => Path.Combine(directory, "qemu-img"))
            .FirstOrDefault(File.Exists);
        Assert.True(path is not null, "qemu-img is not installed; these checks need it (apt-get install -y qemu-utils).");
        var start = new ProcessStartInfo(path!)
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
        if (!process.WaitForExit(TimeSpan.FromMinutes(1)))
        {
            process.Kill();
            Assert.Fail($"qemu-img {string.Join(' ', args)} did not finish within a minute");
        }

        return new Result(process.ExitCode, output.Result, error.Result);
    }
}
