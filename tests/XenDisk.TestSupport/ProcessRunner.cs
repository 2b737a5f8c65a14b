using System.ComponentModel;
using System.Diagnostics;

namespace XenDisk.TestSupport;

/// <summary>What a program printed and returned.</summary>
public sealed record ProcessResult(int ExitCode, string Output, string Error)
{
    /// <summary>The exit code and everything printed, standard output then standard error.</summary>
    public void Deconstruct(out int exitCode, out string printed)
    {
        exitCode = ExitCode;
        printed = Output + Error;
    }

    public override string ToString() => $"exit {ExitCode}\n--- stdout ---\n{Output}\n--- stderr ---\n{Error}";
}

/// <summary>
/// The tests' one runner for host programs (qemu-img, qemu-io, qemu-nbd, fio, losetup, mount, tgtadm):
/// to completion within a deadline, or started and left to the caller. A program that is missing or
/// does not finish fails the test, naming the Debian package tools/setup installs it from: these
/// tests are evidence about real tools and never skip silently. (The command line's own runner in
/// XenDisk.Cli/Bench serves the benchmarks, inside the product, with no deadline and no test assertions.)
/// </summary>
public static class ProcessRunner
{
    /// <summary>Long enough for qemu-img convert of the largest test image on a loaded machine.</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromMinutes(2);

    /// <summary>The program's full path on PATH, or null.</summary>
    public static string? TryFind(string program) =>
        System.IO.Path.IsPathRooted(program)
            ? (File.Exists(program) ? program : null)
            : (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin")
                .Split(':', StringSplitOptions.RemoveEmptyEntries)
                .Select(directory => System.IO.Path.Combine(directory, program))
                .FirstOrDefault(File.Exists);

    /// <summary>The program's full path; fails the test, naming the package to install, when it is missing.</summary>
    public static string Find(string program)
    {
        string? path = TryFind(program);
        Assert.True(path is not null, $"{program} is not installed; these tests need it ({InstallHint(program)}).");
        return path!;
    }

    public static ProcessResult Run(string program, params string[] arguments) => Run(program, arguments, DefaultTimeout);

    /// <summary>Runs the program to completion; a program still running at <paramref name="timeout"/> is killed and fails the test.</summary>
    public static ProcessResult Run(string program, IEnumerable<string> arguments, TimeSpan timeout)
    {
        string[] args = [.. arguments];
        using Process process = Start(program, args);
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{program} {string.Join(' ', args)} did not finish within {timeout.TotalSeconds} s");
        }

        return new ProcessResult(process.ExitCode, output.Result, error.Result);
    }

    /// <summary>Runs the program and fails the test unless it exits with 0.</summary>
    public static ProcessResult RunOk(string program, params string[] arguments)
    {
        ProcessResult result = Run(program, arguments);
        Assert.True(result.ExitCode == 0, $"{System.IO.Path.GetFileName(program)} {string.Join(' ', arguments)} failed ({InstallHint(program)}):\n{result}");
        return result;
    }

    /// <summary>Runs the program, fails the test unless it exits with 0, and returns its standard output trimmed.</summary>
    public static string Output(string program, params string[] arguments) => RunOk(program, arguments).Output.Trim();

    /// <summary>
    /// Starts the program with standard output and error (and, with <paramref name="redirectInput"/>,
    /// standard input) redirected. The caller reads them, waits for the process and disposes it.
    /// </summary>
    public static Process Start(string program, IEnumerable<string> arguments, bool redirectInput = false)
    {
        ProcessStartInfo start = new(Find(program))
        {
            RedirectStandardInput = redirectInput,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        try
        {
            return Process.Start(start) ?? throw new InvalidOperationException($"{program} did not start.");
        }
        catch (Win32Exception e)
        {
            Assert.Fail($"Cannot run {program} ({e.Message}); these tests need it ({InstallHint(program)}).");
            throw;
        }
    }

    /// <summary>Where tools/setup gets each program the tests run, for the failure message.</summary>
    private static string InstallHint(string program) => System.IO.Path.GetFileName(program) switch
    {
        "qemu-img" or "qemu-io" or "qemu-nbd" => "Debian package qemu-utils",
        "losetup" or "mount" or "umount" or "blockdev" => "util-linux, root and loop devices (modprobe loop)",
        "fio" => "Debian package fio",
        "tgtd" or "tgtadm" => "Debian package tgt",
        "prometheus" => "Debian package prometheus",
        _ => "tools/setup installs what the tests need",
    };
}
