using System.Diagnostics;

namespace XenDisk.Cli.Bench;

/// <summary>Runs a peer program of a benchmark (qemu-img, fio, perf) to completion and returns what it printed.</summary>
internal static class ProcessRunner
{
    public static (int Exit, string Output, string Error) Run(string program, IEnumerable<string> args)
    {
        Process process = Start(program, args);
        using (process)
        {
            Task<string> output = process.StandardOutput.ReadToEndAsync();
            Task<string> error = process.StandardError.ReadToEndAsync();
            process.WaitForExit();
            return (process.ExitCode, output.Result, error.Result);
        }
    }

    /// <summary>Starts the program with its output redirected; the caller waits for it and disposes it.</summary>
    public static Process Start(string program, IEnumerable<string> args)
    {
        ProcessStartInfo start = new(program)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        return Process.Start(start) ?? throw new InvalidOperationException($"cannot start {program}");
    }

    /// <summary>The program's full path on PATH, or null.</summary>
    public static string? Find(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin")
            .Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(directory => Path.Combine(directory, program))
            .FirstOrDefault(File.Exists);
}
