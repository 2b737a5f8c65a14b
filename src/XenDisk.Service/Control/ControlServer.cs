using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using XenDisk.Service.Configuration;
using XenDisk.Service.Maintenance;

namespace XenDisk.Service.Control;

/// <summary>
/// The control socket (Control:SocketPath): a Unix stream socket answering one JSON request per
/// connection (see ControlProtocol.cs). Mode 0660, so only root and the socket's group may ask: status
/// is a read-only view of the service, hydrate and hydrate-cancel start and stop background work on
/// a device's overlay (the work runs on threads of its own, never on this socket's).
/// A socket file left by a crashed instance is removed at start; a live one (another instance answers)
/// stops this one from starting, since two backends on one xenstore would fight over every device.
/// </summary>
internal sealed class ControlServer : IHostedService, IAsyncDisposable
{
    /// <summary>A request is a few dozen bytes; anything this large is not a client of ours.</summary>
    internal const int MaxRequestBytes = 64 * 1024;

    private const int ListenBacklog = 16;

    /// <summary>Concurrent connections served; more are closed at once.</summary>
    private const int MaxConcurrentConnections = 8;

    /// <summary>A client must send its request within this time.</summary>
    private static readonly TimeSpan RequestTimeout = TimeSpan.FromSeconds(5);

    private readonly string _path;
    private readonly StatusReporter _reporter;
    private readonly HydrationManager _hydrations;
    private readonly DeviceResizer _resizer;
    private readonly ILogger _logger;
    private readonly SemaphoreSlim _connections = new(MaxConcurrentConnections, MaxConcurrentConnections);
    private readonly CancellationTokenSource _stopping = new();
    private Socket? _listener;
    private Task? _acceptLoop;
    private int _stopped;
    private int _disposed;

    public ControlServer(IOptions<ControlSettings> settings, StatusReporter reporter, HydrationManager hydrations, DeviceResizer resizer, ILogger<ControlServer> logger)
    {
        _resizer = resizer;
        _path = settings.Value.SocketPath;
        _reporter = reporter;
        _hydrations = hydrations;
        _logger = logger;
    }

    public string SocketPath => _path;

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        string? directory = Path.GetDirectoryName(_path);
        if (!string.IsNullOrEmpty(directory))
        {
            Directory.CreateDirectory(directory);
        }

        if (PathExists(_path))
        {
            if (await ControlClient.IsServingAsync(_path, cancellationToken).ConfigureAwait(false))
            {
                throw new InvalidOperationException($"Another xendisk instance is running: it answers on {_path} (Control:SocketPath). Stop it first.");
            }

            File.Delete(_path);
            ServiceLog.StaleControlSocket(_logger, _path);
        }

        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            listener.Bind(new UnixDomainSocketEndPoint(_path));
            if (!OperatingSystem.IsWindows())
            {
                File.SetUnixFileMode(_path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite);
            }

            listener.Listen(ListenBacklog);
        }
        catch
        {
            listener.Dispose();
            throw;
        }

        _listener = listener;
        _acceptLoop = Task.Run(() => AcceptLoopAsync(listener, _stopping.Token), CancellationToken.None);
        ServiceLog.ControlListening(_logger, _path);
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        // Idempotent: the host stops the service, and the container disposes it (which stops it again).
        if (Interlocked.Exchange(ref _stopped, 1) != 0)
        {
            return;
        }

        await _stopping.CancelAsync().ConfigureAwait(false);
        Socket? listener = _listener;
        _listener = null;
        listener?.Dispose();
        if (_acceptLoop is not null)
        {
            await _acceptLoop.ConfigureAwait(false);
        }

        if (listener is not null)
        {
            try
            {
                File.Delete(_path);
            }
            catch (IOException)
            {
                // Already gone, or replaced: nothing of ours left to remove.
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync(CancellationToken.None).ConfigureAwait(false);
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            _stopping.Dispose();
        }
    }

    /// <summary>True when something (a file, a socket, a dangling link) exists at <paramref name="path"/>;
    /// File.Exists is false for sockets.</summary>
    internal static bool PathExists(string path)
    {
        try
        {
            _ = File.GetAttributes(path);
            return true;
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            return false;
        }
    }

    private async Task AcceptLoopAsync(Socket listener, CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            Socket connection;
            try
            {
                connection = await listener.AcceptAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException || cancellationToken.IsCancellationRequested)
            {
                return;
            }
            catch (SocketException e)
            {
                ServiceLog.ControlRequestFailed(_logger, e.Message);
                continue;
            }

            if (!_connections.Wait(0))
            {
                connection.Dispose();
                continue;
            }

            _ = Task.Run(async () =>
            {
                try
                {
                    await ServeAsync(connection, cancellationToken).ConfigureAwait(false);
                }
                finally
                {
                    connection.Dispose();
                    _connections.Release();
                }
            }, CancellationToken.None);
        }
    }

    private async Task ServeAsync(Socket connection, CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(RequestTimeout);
        try
        {
            byte[]? line = await ReadLineAsync(connection, timeout.Token).ConfigureAwait(false);
            ControlResponse response = line is null
                ? new ControlResponse(false, $"The request must be one line of JSON of at most {MaxRequestBytes} bytes.")
                : await HandleAsync(line, timeout.Token).ConfigureAwait(false);
            byte[] payload = JsonSerializer.SerializeToUtf8Bytes(response, ControlJsonContext.Default.ControlResponse);
            await connection.SendAsync(payload, SocketFlags.None, timeout.Token).ConfigureAwait(false);
            await connection.SendAsync("\n"u8.ToArray(), SocketFlags.None, timeout.Token).ConfigureAwait(false);
            connection.Shutdown(SocketShutdown.Send);
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
        {
            ServiceLog.ControlRequestFailed(_logger, e.Message);
        }
    }

    private async Task<ControlResponse> HandleAsync(byte[] line, CancellationToken cancellationToken)
    {
        ControlRequest? request;
        try
        {
            request = JsonSerializer.Deserialize(line, ControlJsonContext.Default.ControlRequest);
        }
        catch (JsonException e)
        {
            return new ControlResponse(false, "The request is not valid JSON: " + e.Message);
        }

        return request?.Command switch
        {
            ControlCommands.Status => new ControlResponse(true, Status: Status(request.Collect == true)),
            ControlCommands.Hydrate => Answer(await _hydrations.StartAsync(request.Device, request.BytesPerSecond ?? 0, cancellationToken).ConfigureAwait(false)),
            ControlCommands.HydrateCancel => Answer(await _hydrations.CancelAsync(request.Device, cancellationToken).ConfigureAwait(false)),
            ControlCommands.Resize => Answer(await _resizer.ResizeAsync(request.Device, cancellationToken).ConfigureAwait(false)),
            null => new ControlResponse(false, $"The request names no command; known: {ControlCommands.Known}."),
            string other => new ControlResponse(false, $"Unknown command \"{Printable(other)}\"; known: {ControlCommands.Known}."),
        };
    }

    private ServiceStatusReport Status(bool collect)
    {
        if (collect)
        {
            ProcessMemory.Collect();
        }

        return _reporter.Report() with { Memory = ProcessMemory.Report(collect) };
    }

    private static ControlResponse Answer(HydrationOutcome outcome) => outcome.Refusal is { } refusal
        ? new ControlResponse(false, refusal)
        : new ControlResponse(true, Device: outcome.BackendPath, Hydration: outcome.Report);

    private static ControlResponse Answer(ResizeOutcome outcome) => outcome.Refusal is { } refusal
        ? new ControlResponse(false, refusal)
        : new ControlResponse(true, Device: outcome.BackendPath, Resize: outcome.Report);

    /// <summary>A client's text echoed in an answer: short and without control characters.</summary>
    private static string Printable(string text) =>
        text.Length > 64 || text.Any(char.IsControl) ? "(unprintable)" : text;

    /// <summary>Reads up to the first line feed (or the end of the stream); null when too long or empty.</summary>
    private static async Task<byte[]?> ReadLineAsync(Socket connection, CancellationToken cancellationToken)
    {
        var buffer = new byte[MaxRequestBytes];
        int length = 0;
        while (length < buffer.Length)
        {
            int read = await connection.ReceiveAsync(buffer.AsMemory(length), SocketFlags.None, cancellationToken).ConfigureAwait(false);
            if (read == 0)
            {
                break;
            }

            int newline = buffer.AsSpan(length, read).IndexOf((byte)'\n');
            length += read;
            if (newline >= 0)
            {
                length = length - read + newline;
                return buffer[..length];
            }
        }

        return length is > 0 and < MaxRequestBytes ? buffer[..length] : null;
    }
}

/// <summary>The client side, used by `xendisk status` and `xendisk hydrate`.</summary>
public static class ControlClient
{
    private static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(10);

    /// <summary>Asks the service at <paramref name="socketPath"/> for its status. Throws
    /// <see cref="ControlClientException"/> with a message for people when no service answers.</summary>
    /// <param name="collect">Ask for a full compacting garbage collection before the report (its memory figures then hold only what is reachable).</param>
    public static async Task<ServiceStatusReport> GetStatusAsync(string socketPath, bool collect = false, CancellationToken cancellationToken = default)
    {
        ControlResponse response = await SendAsync(socketPath, new ControlRequest(ControlCommands.Status, Collect: collect ? true : null), cancellationToken).ConfigureAwait(false);
        if (!response.Ok || response.Status is null)
        {
            throw new ControlClientException($"The service refused the request: {response.Error ?? "no status in its answer"}");
        }

        return response.Status;
    }

    /// <summary>
    /// Starts hydrating the overlay of <paramref name="device"/> (a backend path or DOMID/DEVICE) in
    /// the service, at most <paramref name="bytesPerSecond"/> from the base (0: no limit). Returns the
    /// device's backend path and its hydration. Throws <see cref="ControlRefusedException"/> with the
    /// service's reason when it refuses, <see cref="ControlClientException"/> when no service answers.
    /// </summary>
    public static Task<(string Device, HydrationReport Hydration)> StartHydrationAsync(string socketPath, string device, long bytesPerSecond, CancellationToken cancellationToken = default) =>
        HydrationCommandAsync(socketPath, new ControlRequest(ControlCommands.Hydrate, device, bytesPerSecond > 0 ? bytesPerSecond : null), cancellationToken);

    /// <summary>Cancels the hydration running on <paramref name="device"/>; returns its state afterwards.</summary>
    public static Task<(string Device, HydrationReport Hydration)> CancelHydrationAsync(string socketPath, string device, CancellationToken cancellationToken = default) =>
        HydrationCommandAsync(socketPath, new ControlRequest(ControlCommands.HydrateCancel, device), cancellationToken);

    /// <summary>
    /// Re-reads the size of <paramref name="device"/>'s disk in the service now, telling its guest when
    /// it changed. Throws <see cref="ControlRefusedException"/> with the service's reason when it
    /// refuses, <see cref="ControlClientException"/> when no service answers.
    /// </summary>
    public static async Task<(string Device, ResizeReport Resize)> ResizeAsync(string socketPath, string device, CancellationToken cancellationToken = default)
    {
        ControlResponse response = await SendAsync(socketPath, new ControlRequest(ControlCommands.Resize, device), cancellationToken).ConfigureAwait(false);
        if (!response.Ok || response.Device is null || response.Resize is null)
        {
            throw new ControlRefusedException(response.Error ?? "the answer names no device or size");
        }

        return (response.Device, response.Resize);
    }

    private static async Task<(string Device, HydrationReport Hydration)> HydrationCommandAsync(string socketPath, ControlRequest request, CancellationToken cancellationToken)
    {
        ControlResponse response = await SendAsync(socketPath, request, cancellationToken).ConfigureAwait(false);
        if (!response.Ok || response.Device is null || response.Hydration is null)
        {
            throw new ControlRefusedException(response.Error ?? "the answer names no device or hydration");
        }

        return (response.Device, response.Hydration);
    }

    /// <summary>Writes the report as indented JSON (the `--json` output).</summary>
    public static string ToJson(ServiceStatusReport report) =>
        JsonSerializer.Serialize(report, ControlJsonContext.Indented.ServiceStatusReport);

    /// <summary>True when something accepts connections on the socket.</summary>
    internal static async Task<bool> IsServingAsync(string socketPath, CancellationToken cancellationToken)
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    public static async Task<ControlResponse> SendAsync(string socketPath, ControlRequest request, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(socketPath);
        ArgumentNullException.ThrowIfNull(request);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(DefaultTimeout);
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), timeout.Token).ConfigureAwait(false);
        }
        catch (SocketException e)
        {
            bool present = ControlServer.PathExists(socketPath);
            throw new ControlClientException(e.SocketErrorCode switch
            {
                _ when !present => $"No xendisk service is running: {socketPath} does not exist. Start it (systemctl start xendisk, or xendisk serve), or pass --socket.",
                SocketError.AccessDenied => $"Permission denied on {socketPath}: run xendisk status as root (or as a member of the socket's group).",
                SocketError.ConnectionRefused => $"No xendisk service is listening on {socketPath} (a stopped instance left it behind?). Start the service, or pass --socket.",
                _ => $"Cannot reach the xendisk service at {socketPath}: {e.Message}",
            }, e);
        }

        try
        {
            byte[] payload = JsonSerializer.SerializeToUtf8Bytes(request, ControlJsonContext.Default.ControlRequest);
            await socket.SendAsync(payload, SocketFlags.None, timeout.Token).ConfigureAwait(false);
            await socket.SendAsync("\n"u8.ToArray(), SocketFlags.None, timeout.Token).ConfigureAwait(false);
            using var received = new MemoryStream();
            var buffer = new byte[16 * 1024];
            while (true)
            {
                int read = await socket.ReceiveAsync(buffer, SocketFlags.None, timeout.Token).ConfigureAwait(false);
                if (read == 0)
                {
                    break;
                }

                received.Write(buffer, 0, read);
            }

            return JsonSerializer.Deserialize(received.ToArray(), ControlJsonContext.Default.ControlResponse)
                ?? throw new ControlClientException("The service sent an empty answer.");
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new ControlClientException($"The xendisk service at {socketPath} did not answer within {DefaultTimeout.TotalSeconds:F0} s.");
        }
        catch (Exception e) when (e is SocketException or JsonException)
        {
            throw new ControlClientException($"The xendisk service at {socketPath} sent an unreadable answer: {e.Message}", e);
        }
    }
}

/// <summary>The control client could not get an answer; the message says why, for people.</summary>
public class ControlClientException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>The service answered, and refused the request; the message is its reason.</summary>
public sealed class ControlRefusedException(string reason) : ControlClientException(reason);
