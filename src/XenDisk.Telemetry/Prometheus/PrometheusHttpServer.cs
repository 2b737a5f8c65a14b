using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging;

namespace XenDisk.Telemetry.Prometheus;

/// <summary>
/// The smallest HTTP/1.1 server that serves a Prometheus scrape: GET or HEAD of one path on one
/// address, one request per connection (every answer says Connection: close), no TLS, no
/// compression. Anything else gets 404 or 405; a request head that is too large, malformed or too slow
/// gets 400 or is dropped. Meant for a loopback or management address: it has no authentication.
/// </summary>
public sealed class PrometheusHttpServer : IAsyncDisposable
{
    /// <summary>A scrape request is a request line and a few headers; anything larger is not Prometheus.</summary>
    private const int MaxRequestHeadBytes = 16 * 1024;

    /// <summary>Concurrent connections served; more are closed at once (Prometheus scrapes one at a time).</summary>
    private const int MaxConcurrentConnections = 8;

    /// <summary>A client must send its request head within this time, so idle connections cannot pile up.</summary>
    private static readonly TimeSpan RequestHeadTimeout = TimeSpan.FromSeconds(10);

    /// <summary>How long and how much a refused client may keep sending before the connection is closed.</summary>
    private static readonly TimeSpan LingerTimeout = TimeSpan.FromSeconds(2);
    private const int MaxLingerBytes = 1024 * 1024;

    private readonly Uri _address;
    private readonly Func<byte[]> _scrape;
    private readonly ILogger _logger;
    private readonly SemaphoreSlim _connections = new(MaxConcurrentConnections, MaxConcurrentConnections);
    private readonly CancellationTokenSource _stopping = new();
    private TcpListener? _listener;
    private Task? _acceptLoop;
    private int _disposed;

    /// <param name="address">http://host:port/path; host is an IP address or "localhost"; port 0 picks a free port (tests).</param>
    /// <param name="scrape">Produces the body of one scrape (UTF-8 text format 0.0.4).</param>
    public PrometheusHttpServer(Uri address, Func<byte[]> scrape, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(address);
        ArgumentNullException.ThrowIfNull(scrape);
        ArgumentNullException.ThrowIfNull(logger);
        if (!TryParseListenAddress(address, out _, out _, out string? problem))
        {
            throw new ArgumentException(problem, nameof(address));
        }

        _address = address;
        _scrape = scrape;
        _logger = logger;
    }

    /// <summary>Where the server listens, once started (the real port when 0 was asked for).</summary>
    public IPEndPoint? LocalEndPoint => _listener?.LocalEndpoint as IPEndPoint;

    /// <summary>The scrape URL, once started.</summary>
    public Uri? Url => LocalEndPoint is { } endPoint
        ? new UriBuilder(Uri.UriSchemeHttp, endPoint.Address.ToString(), endPoint.Port, _address.AbsolutePath).Uri
        : null;

    /// <summary>
    /// Checks a configured listen address: an absolute http URL whose host is an IP address or
    /// "localhost", with an explicit path and no query or fragment. Returns the endpoint to bind and the path.
    /// </summary>
    public static bool TryParseListenAddress(Uri? address, out IPEndPoint endPoint, out string path, out string? problem)
    {
        endPoint = new IPEndPoint(IPAddress.Loopback, 0);
        path = "/";
        problem = null;
        if (address is null || !address.IsAbsoluteUri || address.Scheme != Uri.UriSchemeHttp)
        {
            problem = "must be an absolute http:// URL such as http://127.0.0.1:9464/metrics (https is not served)";
            return false;
        }

        if (!string.IsNullOrEmpty(address.Query) || !string.IsNullOrEmpty(address.Fragment) || !string.IsNullOrEmpty(address.UserInfo))
        {
            problem = "must not carry user information, a query or a fragment";
            return false;
        }

        IPAddress ip;
        if (string.Equals(address.Host, "localhost", StringComparison.OrdinalIgnoreCase))
        {
            ip = IPAddress.Loopback;
        }
        else if (!IPAddress.TryParse(address.Host.Trim('[', ']'), out ip!))
        {
            problem = $"host \"{address.Host}\" must be an IP address (or localhost): the listener binds one address, it does not resolve names";
            return false;
        }

        endPoint = new IPEndPoint(ip, address.Port);
        path = address.AbsolutePath;
        return true;
    }

    /// <summary>Binds the socket (throws <see cref="SocketException"/> when the address is in use) and starts accepting.</summary>
    public void Start()
    {
        TryParseListenAddress(_address, out IPEndPoint endPoint, out _, out _);
        var listener = new TcpListener(endPoint);
        listener.Start();
        _listener = listener;
        _acceptLoop = Task.Run(() => AcceptLoopAsync(listener, _stopping.Token));
        TelemetryLog.PrometheusListening(_logger, Url!.ToString());
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        await _stopping.CancelAsync().ConfigureAwait(false);
        _listener?.Stop();
        if (_acceptLoop is not null)
        {
            await _acceptLoop.ConfigureAwait(false);
        }

        _stopping.Dispose();
    }

    private async Task AcceptLoopAsync(TcpListener listener, CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await listener.AcceptSocketAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException || cancellationToken.IsCancellationRequested)
            {
                return;
            }
            catch (SocketException e)
            {
                // A connection that failed before we accepted it (ECONNABORTED): keep serving.
                TelemetryLog.PrometheusConnectionFailed(_logger, e.Message);
                continue;
            }

            if (!_connections.Wait(0))
            {
                socket.Dispose();
                continue;
            }

            _ = Task.Run(async () =>
            {
                try
                {
                    await ServeAsync(socket, cancellationToken).ConfigureAwait(false);
                }
                finally
                {
                    socket.Dispose();
                    _connections.Release();
                }
            }, CancellationToken.None);
        }
    }

    private async Task ServeAsync(Socket socket, CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(RequestHeadTimeout);
        try
        {
            string? head = await ReadRequestHeadAsync(socket, timeout.Token).ConfigureAwait(false);
            if (head is null)
            {
                await RespondAsync(socket, 400, "Bad Request", "text/plain; charset=utf-8", "malformed request\n"u8.ToArray(), includeBody: true, timeout.Token).ConfigureAwait(false);
                return;
            }

            string[] requestLine = head[..head.IndexOf('\r', StringComparison.Ordinal)].Split(' ');
            if (requestLine.Length != 3 || !requestLine[2].StartsWith("HTTP/1.", StringComparison.Ordinal))
            {
                await RespondAsync(socket, 400, "Bad Request", "text/plain; charset=utf-8", "malformed request line\n"u8.ToArray(), includeBody: true, timeout.Token).ConfigureAwait(false);
                return;
            }

            string method = requestLine[0];
            string target = requestLine[1];
            int query = target.IndexOf('?', StringComparison.Ordinal);
            string path = query >= 0 ? target[..query] : target;
            if (!string.Equals(path, _address.AbsolutePath, StringComparison.Ordinal))
            {
                await RespondAsync(socket, 404, "Not Found", "text/plain; charset=utf-8",
                    Encoding.UTF8.GetBytes($"metrics are at {_address.AbsolutePath}\n"), includeBody: method != "HEAD", timeout.Token).ConfigureAwait(false);
                return;
            }

            if (method is not ("GET" or "HEAD"))
            {
                await RespondAsync(socket, 405, "Method Not Allowed", "text/plain; charset=utf-8", "use GET\n"u8.ToArray(), includeBody: true, timeout.Token).ConfigureAwait(false);
                return;
            }

            byte[] body;
            try
            {
                body = _scrape();
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                // A failing scrape is reported to the scraper and logged; the server keeps running.
                TelemetryLog.ScrapeFailed(_logger, e);
                await RespondAsync(socket, 500, "Internal Server Error", "text/plain; charset=utf-8", "scrape failed; see the service log\n"u8.ToArray(), includeBody: true, timeout.Token).ConfigureAwait(false);
                return;
            }

            await RespondAsync(socket, 200, "OK", PrometheusTextWriter.ContentType, body, includeBody: method == "GET", cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or IOException or ObjectDisposedException)
        {
            // The client went away, was too slow, or the server is stopping: nothing to answer.
        }
    }

    /// <summary>Reads up to the blank line ending the request head; null when it is too large or the client closed early.</summary>
    private static async Task<string?> ReadRequestHeadAsync(Socket socket, CancellationToken cancellationToken)
    {
        var buffer = new byte[MaxRequestHeadBytes];
        int length = 0;
        while (length < buffer.Length)
        {
            int read = await socket.ReceiveAsync(buffer.AsMemory(length), SocketFlags.None, cancellationToken).ConfigureAwait(false);
            if (read == 0)
            {
                return null;
            }

            int searchFrom = Math.Max(0, length - 3);
            length += read;
            int end = buffer.AsSpan(searchFrom, length - searchFrom).IndexOf("\r\n\r\n"u8);
            if (end >= 0)
            {
                // The head is ASCII (RFC 9112 §2.2); Latin-1 never fails on stray bytes.
                return Encoding.Latin1.GetString(buffer, 0, searchFrom + end + 2);
            }
        }

        return null;
    }

    private static async Task RespondAsync(Socket socket, int status, string reason, string contentType, byte[] body, bool includeBody, CancellationToken cancellationToken)
    {
        string head = string.Create(CultureInfo.InvariantCulture,
            $"HTTP/1.1 {status} {reason}\r\nContent-Type: {contentType}\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n");
        await socket.SendAsync(Encoding.ASCII.GetBytes(head), SocketFlags.None, cancellationToken).ConfigureAwait(false);
        if (includeBody)
        {
            int sent = 0;
            while (sent < body.Length)
            {
                sent += await socket.SendAsync(body.AsMemory(sent), SocketFlags.None, cancellationToken).ConfigureAwait(false);
            }
        }

        socket.Shutdown(SocketShutdown.Send);
        await DrainAsync(socket).ConfigureAwait(false);
    }

    /// <summary>
    /// A lingering close: read and drop what the client is still sending (a request we refused half-way)
    /// before closing, because closing with unread data makes the kernel send a reset, which can destroy
    /// the answer before the client has read it. Bounded in time and bytes.
    /// </summary>
    private static async Task DrainAsync(Socket socket)
    {
        using var linger = new CancellationTokenSource(LingerTimeout);
        var sink = new byte[4096];
        int drained = 0;
        try
        {
            while (drained < MaxLingerBytes)
            {
                int read = await socket.ReceiveAsync(sink, SocketFlags.None, linger.Token).ConfigureAwait(false);
                if (read == 0)
                {
                    return;
                }

                drained += read;
            }
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException)
        {
            // The client is slow or gone: close anyway.
        }
    }
}
