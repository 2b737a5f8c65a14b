using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace XenDisk.TestSupport.Iscsi;

/// <summary>A LUN of a <see cref="TgtdTarget"/>: a file, and whether it advertises UNMAP (tgt's thin_provisioning).</summary>
public sealed record TgtdLun(int Lun, string Path, bool ThinProvisioning = false);

/// <summary>
/// One target of a <see cref="TgtdTarget"/>. <see cref="AllowedInitiators"/> empty admits every initiator
/// (tgtadm -I ALL); otherwise only those iSCSI names log in. <see cref="ChapUser"/> makes CHAP mandatory.
/// </summary>
public sealed record TgtdTargetDefinition(string Iqn, IReadOnlyList<TgtdLun> Luns)
{
    public IReadOnlyList<string> AllowedInitiators { get; init; } = [];

    public string? ChapUser { get; init; }

    public string? ChapSecret { get; init; }
}

/// <summary>
/// Debian's tgtd, run in the foreground on 127.0.0.1 on a free port with its own control socket
/// (tgtd -C N, tgtadm -C N), so tests never touch a system tgtd on port 3260. The targets are set up
/// through tgtadm after every start, so <see cref="Kill"/> and <see cref="Start"/> restart the same
/// target on the same port over the same files (the way a real target comes back after a crash).
/// </summary>
public sealed class TgtdTarget : IDisposable
{
    private const string Tgtd = "/usr/sbin/tgtd";
    private const string Tgtadm = "/usr/sbin/tgtadm";

    /// <summary>How long tgtd may take to answer its control socket after it starts.</summary>
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(20);

    private readonly List<TgtdTargetDefinition> _targets = [];
    private readonly string _logPath;
    private Process? _process;

    private TgtdTarget(string directory)
    {
        Directory.CreateDirectory(directory);
        _logPath = Path.Combine(directory, "tgtd.log");
        Port = FreePort();
        // tgtd takes control socket numbers below 32768 and a system tgtd uses 0. Free ports come from the
        // ephemeral range (32768 and up), so this maps each to its own number from 1.
        ControlNumber = Port >= 32768 ? Port - 32767 : Port;
    }

    /// <summary>Why tgtd cannot run here, or null when it can (tools/setup installs Debian's tgt).</summary>
    public static string? UnavailableReason =>
        File.Exists(Tgtd) && File.Exists(Tgtadm) ? null : $"{Tgtd} is not installed (Debian package tgt; tools/setup installs it)";

    public int Port { get; }

    public int ControlNumber { get; }

    public string Portal => $"127.0.0.1:{Port.ToString(CultureInfo.InvariantCulture)}";

    public bool Running => _process is { HasExited: false };

    /// <summary>Starts tgtd and defines <paramref name="targets"/>; throws with tgtd's log if it does not come up.</summary>
    public static TgtdTarget Start(string directory, params TgtdTargetDefinition[] targets)
    {
        if (UnavailableReason is string reason)
        {
            throw new InvalidOperationException(reason);
        }
        TgtdTarget target = new(directory);
        target._targets.AddRange(targets);
        try
        {
            target.Start();
            return target;
        }
        catch
        {
            target.Dispose();
            throw;
        }
    }

    /// <summary>The URL of a LUN: iscsi://127.0.0.1:PORT/IQN/LUN.</summary>
    public string Url(string iqn, int lun) => $"iscsi://{Portal}/{iqn}/{lun.ToString(CultureInfo.InvariantCulture)}";

    /// <summary>(Re)starts tgtd on the same port and control socket and defines every target again.</summary>
    public void Start()
    {
        if (Running)
        {
            throw new InvalidOperationException("tgtd is already running.");
        }
        ProcessStartInfo start = new(Tgtd)
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (string argument in new[] { "-f", "-C", ControlNumber.ToString(CultureInfo.InvariantCulture), "--iscsi", $"portal={Portal}" })
        {
            start.ArgumentList.Add(argument);
        }
        Process process = Process.Start(start) ?? throw new InvalidOperationException("tgtd did not start.");
        StreamWriter log = new(_logPath, append: true) { AutoFlush = true };
        process.OutputDataReceived += (_, e) => { if (e.Data != null) { lock (log) { log.WriteLine(e.Data); } } };
        process.ErrorDataReceived += (_, e) => { if (e.Data != null) { lock (log) { log.WriteLine(e.Data); } } };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        _process = process;
        WaitUntilListening();
        for (int i = 0; i < _targets.Count; i++)
        {
            Define(i + 1, _targets[i]);
        }
    }

    /// <summary>Kills tgtd with SIGKILL (no logout, no goodbye: the initiator sees its connections drop) and waits for it to exit.</summary>
    public void Kill()
    {
        if (_process == null)
        {
            return;
        }
        if (!_process.HasExited)
        {
            _process.Kill();
            _process.WaitForExit();
        }
        _process.Dispose();
        _process = null;
    }

    /// <summary>Runs tgtadm against this tgtd's control socket.</summary>
    public string Admin(params string[] arguments)
    {
        string[] all = ["-C", ControlNumber.ToString(CultureInfo.InvariantCulture), "--lld", "iscsi", .. arguments];
        (int code, string output, string error) = ProcessRunner.Run(Tgtadm, all);
        if (code != 0)
        {
            throw new InvalidOperationException($"tgtadm {string.Join(' ', all)} failed ({code}): {error.Trim()} {output.Trim()}");
        }
        return output;
    }

    /// <summary>What tgtd printed (for messages when a test fails).</summary>
    public string Log => File.Exists(_logPath) ? File.ReadAllText(_logPath) : "";

    public void Dispose() => Kill();

    private void Define(int tid, TgtdTargetDefinition definition)
    {
        string id = tid.ToString(CultureInfo.InvariantCulture);
        Admin("--op", "new", "--mode", "target", "--tid", id, "-T", definition.Iqn);
        foreach (TgtdLun lun in definition.Luns)
        {
            string number = lun.Lun.ToString(CultureInfo.InvariantCulture);
            Admin("--op", "new", "--mode", "logicalunit", "--tid", id, "--lun", number, "-b", lun.Path);
            if (lun.ThinProvisioning)
            {
                Admin("--op", "update", "--mode", "logicalunit", "--tid", id, "--lun", number, "--params", "thin_provisioning=1");
            }
        }
        if (definition.AllowedInitiators.Count == 0)
        {
            Admin("--op", "bind", "--mode", "target", "--tid", id, "-I", "ALL");
        }
        else
        {
            foreach (string initiator in definition.AllowedInitiators)
            {
                Admin("--op", "bind", "--mode", "target", "--tid", id, "-Q", initiator);
            }
        }
        if (definition.ChapUser != null)
        {
            Admin("--op", "new", "--mode", "account", "--user", definition.ChapUser, "--password", definition.ChapSecret ?? "");
            Admin("--op", "bind", "--mode", "account", "--tid", id, "--user", definition.ChapUser);
        }
    }

    private void WaitUntilListening()
    {
        Stopwatch clock = Stopwatch.StartNew();
        while (true)
        {
            if (_process!.HasExited)
            {
                throw new InvalidOperationException($"tgtd exited with {_process.ExitCode} at start: {Log}");
            }
            // Ready when the control socket answers and the portal accepts a connection.
            (int code, _, _) = ProcessRunner.Run(Tgtadm, "-C", ControlNumber.ToString(CultureInfo.InvariantCulture), "--op", "show", "--mode", "sys");
            if (code == 0 && Accepts())
            {
                return;
            }
            if (clock.Elapsed > StartTimeout)
            {
                throw new InvalidOperationException($"tgtd did not answer within {StartTimeout.TotalSeconds} s: {Log}");
            }
            Thread.Sleep(50);
        }
    }

    private bool Accepts()
    {
        try
        {
            using Socket socket = new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            socket.Connect(IPAddress.Loopback, Port);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    private static int FreePort()
    {
        using TcpListener listener = new(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
