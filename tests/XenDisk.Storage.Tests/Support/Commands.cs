using System.Diagnostics;

namespace XenDisk.Storage.Tests.Support;

/// <summary>Runs the host tools the device fixtures need (losetup, mount), failing loudly when they cannot run.</summary>
public static class Commands
{
    public static string Run(string fileName, params string[] arguments)
    {
        var start = new ProcessStartInfo(fileName)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }
        Process process;
        try
        {
            process = Process.Start(start) ?? throw new InvalidOperationException($"{fileName} did not start.");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException(
                $"Cannot run {fileName} ({e.Message}). The storage tests need util-linux (losetup, mount) and root: " +
                "loop devices and ramfs are part of what they test and must not be skipped.", e);
        }
        using (process)
        {
            Task<string> output = process.StandardOutput.ReadToEndAsync();
            string error = process.StandardError.ReadToEnd();
            process.WaitForExit();
            if (process.ExitCode != 0)
            {
                throw new InvalidOperationException(
                    $"{fileName} {string.Join(' ', arguments)} failed with exit code {process.ExitCode}: {error.Trim()}. " +
                    "The storage tests need root and working loop devices (modprobe loop) and ramfs; they must not be skipped.");
            }
            return output.Result.Trim();
        }
    }
}
