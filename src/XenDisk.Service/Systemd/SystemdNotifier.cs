using System.Globalization;
using System.Net.Sockets;
using System.Text;

namespace XenDisk.Service.Systemd;

/// <summary>
/// sd_notify(3) without libsystemd: one datagram per state change ("READY=1", "STOPPING=1",
/// "WATCHDOG=1", "STATUS=...") to the AF_UNIX datagram socket named by $NOTIFY_SOCKET. A name starting
/// with '@' is in the abstract namespace (its first byte is NUL on the wire). Failures are reported as
/// false, never thrown: a service must not stop because its supervisor's socket went away.
/// Thread-safe.
/// </summary>
public sealed class SystemdNotifier : IDisposable
{
    private readonly Lock _lock = new();
    private readonly UnixDomainSocketEndPoint _endPoint;
    private Socket? _socket;

    public SystemdNotifier(string socketName)
    {
        ArgumentException.ThrowIfNullOrEmpty(socketName);
        SocketName = socketName;
        _endPoint = new UnixDomainSocketEndPoint(socketName[0] == '@' ? "\0" + socketName[1..] : socketName);
    }

    public string SocketName { get; }

    /// <summary>The notifier for $NOTIFY_SOCKET, or null when the service was not started by systemd with Type=notify.</summary>
    public static SystemdNotifier? FromEnvironment() =>
        Environment.GetEnvironmentVariable("NOTIFY_SOCKET") is { Length: > 0 } name && (name[0] is '/' or '@')
            ? new SystemdNotifier(name)
            : null;

    /// <summary>
    /// The interval systemd expects keep-alives at: $WATCHDOG_USEC, when set and $WATCHDOG_PID (if set)
    /// names this process (sd_watchdog_enabled(3)); null when the watchdog is off.
    /// </summary>
    public static TimeSpan? WatchdogTimeoutFromEnvironment()
    {
        string? pid = Environment.GetEnvironmentVariable("WATCHDOG_PID");
        if (!string.IsNullOrEmpty(pid) && pid != Environment.ProcessId.ToString(CultureInfo.InvariantCulture))
        {
            return null;
        }

        return ulong.TryParse(Environment.GetEnvironmentVariable("WATCHDOG_USEC"), NumberStyles.None, CultureInfo.InvariantCulture, out ulong microseconds) && microseconds > 0
            ? TimeSpan.FromMicroseconds(microseconds)
            : null;
    }

    /// <summary>Sends one datagram of newline-separated assignments; false when it could not be sent.</summary>
    public bool Notify(string state)
    {
        ArgumentException.ThrowIfNullOrEmpty(state);
        byte[] datagram = Encoding.UTF8.GetBytes(state);
        lock (_lock)
        {
            try
            {
                _socket ??= new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
                return _socket.SendTo(datagram, SocketFlags.None, _endPoint) == datagram.Length;
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                _socket?.Dispose();
                _socket = null;
                return false;
            }
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _socket?.Dispose();
            _socket = null;
        }
    }
}
