using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;
using XenDisk.Cli.Tests.Support;

namespace XenDisk.Cli.Tests;

/// <summary>
/// `xendisk serve --simulate` as systemd runs it: a separate process with $NOTIFY_SOCKET (a real
/// datagram socket here) and $WATCHDOG_USEC, stopped with SIGTERM. Every line it logs carries its
/// syslog priority for the journal.
/// </summary>
public sealed partial class ServeProcessTests : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task Under_systemd_serve_notifies_ready_watchdog_and_stopping_and_logs_syslog_priorities()
    {
        string socketPath = Path.Combine(_dir.Path, "control.sock");
        string config = Path.Combine(_dir.Path, "xendisk.json");
        await File.WriteAllTextAsync(config, $$"""
            {
              "Control": { "SocketPath": "{{socketPath}}" },
              "Telemetry": { "Prometheus": { "Enabled": false } },
              "Simulation": { "Guests": 1, "DiskSizeMiB": 16, "PauseMilliseconds": 20, "ImageDirectory": "{{_dir.Path}}" }
            }
            """);
        // What a crashed instance leaves behind: a bound socket nobody listens on. Replacing it is a warning.
        using var stale = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        stale.Bind(new UnixDomainSocketEndPoint(socketPath));

        string notifyPath = Path.Combine(_dir.Path, "notify.sock");
        using var systemd = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        systemd.Bind(new UnixDomainSocketEndPoint(notifyPath));

        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "xendisk.dll"));
        foreach (string arg in new[] { "serve", "--simulate", "--config", config })
        {
            start.ArgumentList.Add(arg);
        }

        start.Environment["NOTIFY_SOCKET"] = notifyPath;
        start.Environment["WATCHDOG_USEC"] = "400000";
        start.Environment.Remove("WATCHDOG_PID");
        start.Environment.Remove("JOURNAL_STREAM");
        var stdout = new ConcurrentQueue<string>();
        var stderr = new ConcurrentQueue<string>();
        using Process process = Process.Start(start)!;
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) stdout.Enqueue(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) stderr.Enqueue(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            List<string> notifications = await ReceiveUntilAsync(systemd, "READY=1");
            Assert.Contains(notifications, n => n.StartsWith("STATUS=Serving vbd on ", StringComparison.Ordinal));
            await ReceiveUntilAsync(systemd, "WATCHDOG=1");

            using (Process kill = Process.Start("kill", ["-TERM", process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]))
            {
                await kill.WaitForExitAsync().WaitAsync(Timeout);
            }

            await ReceiveUntilAsync(systemd, "STOPPING=1");
            await process.WaitForExitAsync().WaitAsync(Timeout);
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
        }

        string output = string.Join('\n', stdout);
        Assert.True(process.ExitCode == 0, $"exit {process.ExitCode}\n{output}\n{string.Join('\n', stderr)}");
        Assert.NotEmpty(stdout);
        // sd-daemon(3): "<N>" then the message; N is the syslog priority (6 info, 4 warning, 3 error).
        Assert.All(stdout, line => Assert.Matches(Priority(), line));
        Assert.Contains(stdout, line => line.StartsWith("<6>", StringComparison.Ordinal) && line.Contains($"configuration {config}", StringComparison.Ordinal));
        Assert.Contains(stdout, line => line.StartsWith("<4>", StringComparison.Ordinal) && line.Contains("stale control socket", StringComparison.Ordinal));
        Assert.DoesNotContain(stdout, line => line.StartsWith("<3>", StringComparison.Ordinal) || line.StartsWith("<2>", StringComparison.Ordinal));
    }

    [GeneratedRegex(@"^<[0-7]>\S")]
    private static partial Regex Priority();

    private static async Task<List<string>> ReceiveUntilAsync(Socket socket, string assignment)
    {
        var received = new List<string>();
        var buffer = new byte[4096];
        using var cancel = new CancellationTokenSource(Timeout);
        while (true)
        {
            int length = await socket.ReceiveAsync(buffer, SocketFlags.None, cancel.Token);
            string datagram = Encoding.UTF8.GetString(buffer, 0, length);
            received.Add(datagram);
            if (datagram.Split('\n').Contains(assignment))
            {
                return received;
            }
        }
    }
}
