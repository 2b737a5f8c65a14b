using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;

namespace XenDisk.Xen.Native.Tests;

/// <summary>
/// A minimal xenstored on a unix socket, speaking the xsd_sockmsg protocol of
/// xen/include/public/io/xs_wire.h, so that the real libxenstore can be driven end to end without
/// Xen: libxenstore connects to $XENSTORED_PATH when it is set. Not faithful where the tests do not
/// need it: transactions apply writes at once (no isolation), permissions are stored but not enforced.
/// </summary>
internal sealed partial class FakeXenStoreDaemon : IDisposable
{
    private const uint XS_DIRECTORY = 1, XS_READ = 2, XS_GET_PERMS = 3, XS_WATCH = 4, XS_UNWATCH = 5,
        XS_TRANSACTION_START = 6, XS_TRANSACTION_END = 7, XS_GET_DOMAIN_PATH = 10, XS_WRITE = 11,
        XS_MKDIR = 12, XS_RM = 13, XS_SET_PERMS = 14, XS_WATCH_EVENT = 15, XS_ERROR = 16;

    private const int HeaderSize = 16;

    private readonly string _directory;
    private readonly Socket _listener;
    private readonly Thread _acceptThread;
    private readonly object _lock = new();
    private readonly Dictionary<string, string> _nodes = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string[]> _permissions = new(StringComparer.Ordinal);
    private readonly List<(Connection Connection, string Path, string Token)> _watches = [];
    private readonly List<Connection> _connections = [];
    private uint _nextTransaction = 40;

    public FakeXenStoreDaemon()
    {
        _directory = Directory.CreateTempSubdirectory("xs-").FullName;
        SocketPath = Path.Combine(_directory, "socket");
        _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        _listener.Bind(new UnixDomainSocketEndPoint(SocketPath));
        _listener.Listen();
        _acceptThread = new Thread(AcceptLoop) { IsBackground = true, Name = "fake xenstored" };
        _acceptThread.Start();
    }

    public string SocketPath { get; }

    /// <summary>Paths whose writes are refused with EACCES.</summary>
    public HashSet<string> DeniedPaths { get; } = new(StringComparer.Ordinal);

    /// <summary>How many coming commits to refuse with EAGAIN, as xenstored does after a conflicting change.</summary>
    public int ConflictingCommits { get; set; }

    /// <summary>Every XS_TRANSACTION_END payload received ("T" commit, "F" abort), with its transaction id.</summary>
    public List<(uint Transaction, string Payload)> TransactionEnds { get; } = [];

    /// <summary>The raw permission strings of the last XS_SET_PERMS.</summary>
    public string[] LastSetPermissions { get; private set; } = [];

    public void SetNode(string path, string value)
    {
        lock (_lock)
        {
            _nodes[path] = value;
        }
    }

    public string? GetNode(string path)
    {
        lock (_lock)
        {
            return _nodes.TryGetValue(path, out string? value) ? value : null;
        }
    }

    /// <summary>Drops every client connection, as a restarting xenstored would.</summary>
    public void DisconnectAll()
    {
        lock (_lock)
        {
            foreach (Connection connection in _connections)
            {
                connection.Socket.Shutdown(SocketShutdown.Both);
            }
        }
    }

    public void Dispose()
    {
        _listener.Dispose();
        lock (_lock)
        {
            foreach (Connection connection in _connections)
            {
                connection.Socket.Dispose();
            }
        }

        _acceptThread.Join();
        Directory.Delete(_directory, recursive: true);
    }

    private void AcceptLoop()
    {
        while (true)
        {
            Socket client;
            try
            {
                client = _listener.Accept();
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                return;
            }

            var connection = new Connection(client);
            lock (_lock)
            {
                _connections.Add(connection);
            }

            new Thread(() => Serve(connection)) { IsBackground = true, Name = "fake xenstored connection" }.Start();
        }
    }

    private void Serve(Connection connection)
    {
        byte[] header = new byte[HeaderSize];
        try
        {
            while (true)
            {
                if (!ReadExactly(connection.Socket, header))
                {
                    return;
                }

                uint type = BitConverter.ToUInt32(header, 0);
                uint requestId = BitConverter.ToUInt32(header, 4);
                uint transaction = BitConverter.ToUInt32(header, 8);
                byte[] payload = new byte[BitConverter.ToUInt32(header, 12)];
                if (!ReadExactly(connection.Socket, payload))
                {
                    return;
                }

                string[] fields = Encoding.UTF8.GetString(payload).Split('\0');
                (uint replyType, string reply, Action? after) = Handle(connection, type, transaction, fields, payload);
                connection.Send(replyType, requestId, transaction, Encoding.UTF8.GetBytes(reply));
                after?.Invoke();
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    private (uint Type, string Reply, Action? After) Handle(Connection connection, uint type, uint transaction, string[] fields, byte[] payload)
    {
        lock (_lock)
        {
            string path = fields.Length > 0 ? Resolve(fields[0]) : "";
            switch (type)
            {
                case XS_READ:
                    return Exists(path) ? (type, _nodes.GetValueOrDefault(path, ""), null) : Error("ENOENT");
                case XS_WRITE:
                {
                    if (DeniedPaths.Contains(path))
                    {
                        return Error("EACCES");
                    }

                    int valueStart = Encoding.UTF8.GetByteCount(fields[0]) + 1;
                    _nodes[path] = Encoding.UTF8.GetString(payload, valueStart, payload.Length - valueStart);
                    return (type, "OK\0", () => FireWatches(path));
                }

                case XS_MKDIR:
                    _nodes.TryAdd(path, "");
                    return (type, "OK\0", () => FireWatches(path));
                case XS_RM:
                    if (!Exists(path))
                    {
                        return Exists(Parent(path)) ? (type, "OK\0", null) : Error("ENOENT");
                    }

                    foreach (string key in _nodes.Keys.Where(k => IsAtOrBelow(path, k)).ToList())
                    {
                        _nodes.Remove(key);
                    }

                    return (type, "OK\0", () => FireWatches(path));
                case XS_DIRECTORY:
                    if (!Exists(path))
                    {
                        return Error("ENOENT");
                    }

                    return (type, string.Concat(Children(path).Select(c => c + "\0")), null);
                case XS_GET_PERMS:
                    if (!Exists(path))
                    {
                        return Error("ENOENT");
                    }

                    return (type, string.Concat(_permissions.GetValueOrDefault(path, ["n0"]).Select(p => p + "\0")), null);
                case XS_SET_PERMS:
                    LastSetPermissions = fields[1..^1];
                    _permissions[path] = LastSetPermissions;
                    return (type, "OK\0", null);
                case XS_TRANSACTION_START:
                    return (type, (_nextTransaction++).ToString(System.Globalization.CultureInfo.InvariantCulture) + "\0", null);
                case XS_TRANSACTION_END:
                    TransactionEnds.Add((transaction, fields[0]));
                    if (fields[0] == "T" && ConflictingCommits > 0)
                    {
                        ConflictingCommits--;
                        return Error("EAGAIN");
                    }

                    return (type, "OK\0", null);
                case XS_WATCH:
                {
                    string token = fields[1];
                    _watches.Add((connection, path, token));
                    // xenstored fires every new watch once, after acknowledging it.
                    return (type, "OK\0", () => connection.SendWatchEvent(fields[0], token));
                }

                case XS_UNWATCH:
                    return _watches.RemoveAll(w => w.Connection == connection && w.Path == path && w.Token == fields[1]) > 0
                        ? (type, "OK\0", null)
                        : Error("ENOENT");
                case XS_GET_DOMAIN_PATH:
                    return (type, $"/local/domain/{fields[0]}\0", null);
                default:
                    return Error("ENOSYS");
            }
        }

        static (uint, string, Action?) Error(string name) => (XS_ERROR, name + "\0", null);
    }

    private void FireWatches(string changedPath)
    {
        List<(Connection Connection, string Token)> targets;
        lock (_lock)
        {
            targets = [.. _watches.Where(w => IsAtOrBelow(w.Path, changedPath)).Select(w => (w.Connection, w.Token))];
        }

        foreach ((Connection connection, string token) in targets)
        {
            connection.SendWatchEvent(changedPath, token);
        }
    }

    private bool Exists(string path) => path == "/" || _nodes.ContainsKey(path) || _nodes.Keys.Any(k => k.StartsWith(path + "/", StringComparison.Ordinal));

    private IEnumerable<string> Children(string path)
    {
        string prefix = path == "/" ? "/" : path + "/";
        return _nodes.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal))
            .Select(k => k[prefix.Length..].Split('/')[0])
            .Distinct(StringComparer.Ordinal)
            .Order(StringComparer.Ordinal);
    }

    private static string Resolve(string path) => path.StartsWith('/') ? path : "/local/domain/0/" + path;

    private static string Parent(string path) => path.LastIndexOf('/') is > 0 and int i ? path[..i] : "/";

    private static bool IsAtOrBelow(string parent, string child) =>
        child == parent || child.StartsWith(parent.TrimEnd('/') + "/", StringComparison.Ordinal);

    private static bool ReadExactly(Socket socket, byte[] buffer)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int read = socket.Receive(buffer, done, buffer.Length - done, SocketFlags.None);
            if (read == 0)
            {
                return false;
            }

            done += read;
        }

        return true;
    }

    private sealed class Connection(Socket socket)
    {
        public Socket Socket { get; } = socket;

        public void SendWatchEvent(string path, string token) =>
            Send(XS_WATCH_EVENT, 0, 0, Encoding.UTF8.GetBytes(path + "\0" + token + "\0"));

        public void Send(uint type, uint requestId, uint transaction, byte[] body)
        {
            byte[] message = new byte[HeaderSize + body.Length];
            BitConverter.TryWriteBytes(message.AsSpan(0), type);
            BitConverter.TryWriteBytes(message.AsSpan(4), requestId);
            BitConverter.TryWriteBytes(message.AsSpan(8), transaction);
            BitConverter.TryWriteBytes(message.AsSpan(12), (uint)body.Length);
            body.CopyTo(message, HeaderSize);
            lock (this)
            {
                Socket.Send(message);
            }
        }
    }

    /// <summary>
    /// Points libxenstore at this daemon for the duration of a test. libxenstore reads
    /// XENSTORED_PATH with getenv(3) at xs_open, which sees only the native environment, hence setenv(3).
    /// </summary>
    public IDisposable UseForXsOpen()
    {
        Assert.Equal(0, setenv("XENSTORED_PATH", SocketPath, 1));
        return new EnvironmentRestore();
    }

    private sealed class EnvironmentRestore : IDisposable
    {
        public void Dispose() => unsetenv("XENSTORED_PATH");
    }

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int setenv(string name, string value, int overwrite);

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int unsetenv(string name);
}

/// <summary>Tests that change the process's native environment (XENSTORED_PATH) or depend on it run one at a time.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class NativeEnvironmentCollection
{
    public const string Name = "native environment";
}
