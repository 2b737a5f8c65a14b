using System.Threading.Channels;
using XenDisk.Xen.Simulated.XenStore;

namespace XenDisk.Xen.Simulated;

/// <summary>
/// One connection to the simulated xenstored, on behalf of one domain: what xs_open returns inside
/// that domain. Requests are checked against that domain's permissions; watch events of this
/// connection queue up until read with <see cref="ReadWatchAsync"/>.
/// </summary>
public sealed class SimulatedXenStore : IXenStore
{
    private readonly XenStoreServer _server;
    private readonly Channel<XenStoreWatchEvent> _events = Channel.CreateUnbounded<XenStoreWatchEvent>(new UnboundedChannelOptions { SingleReader = false, SingleWriter = false });
    private int _disposed;

    internal SimulatedXenStore(XenStoreServer server, uint domainId)
    {
        _server = server;
        DomainId = domainId;
    }

    /// <summary>The domain this connection speaks for.</summary>
    public uint DomainId { get; }

    /// <summary>Watch events queued and not yet read.</summary>
    public int PendingWatchEvents => _events.Reader.Count;

    public string? Read(XenStoreTransaction transaction, string path)
    {
        ThrowIfDisposed();
        return _server.Read(DomainId, this, transaction, path);
    }

    public void Write(XenStoreTransaction transaction, string path, string value)
    {
        ThrowIfDisposed();
        _server.Write(DomainId, this, transaction, path, value);
    }

    public void Mkdir(XenStoreTransaction transaction, string path)
    {
        ThrowIfDisposed();
        _server.Mkdir(DomainId, this, transaction, path);
    }

    public void Remove(XenStoreTransaction transaction, string path)
    {
        ThrowIfDisposed();
        _server.Remove(DomainId, this, transaction, path);
    }

    public IReadOnlyList<string>? Directory(XenStoreTransaction transaction, string path)
    {
        ThrowIfDisposed();
        return _server.Directory(DomainId, this, transaction, path);
    }

    public IReadOnlyList<XenStorePermission>? GetPermissions(XenStoreTransaction transaction, string path)
    {
        ThrowIfDisposed();
        return _server.GetPermissions(DomainId, this, transaction, path);
    }

    public void SetPermissions(XenStoreTransaction transaction, string path, IReadOnlyList<XenStorePermission> permissions)
    {
        ThrowIfDisposed();
        _server.SetPermissions(DomainId, this, transaction, path, permissions);
    }

    public XenStoreTransaction BeginTransaction()
    {
        ThrowIfDisposed();
        return _server.BeginTransaction(this);
    }

    public bool EndTransaction(XenStoreTransaction transaction, bool abort = false)
    {
        ThrowIfDisposed();
        return _server.EndTransaction(this, transaction, abort);
    }

    public void Watch(string path, string token)
    {
        ThrowIfDisposed();
        _server.Watch(this, path, token);
    }

    public void Unwatch(string path, string token)
    {
        ThrowIfDisposed();
        _server.Unwatch(this, path, token);
    }

    /// <summary>The next watch event; throws <see cref="ObjectDisposedException"/> once the connection is closed and drained.</summary>
    public async ValueTask<XenStoreWatchEvent> ReadWatchAsync(CancellationToken cancellationToken)
    {
        try
        {
            return await _events.Reader.ReadAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
            throw new ObjectDisposedException(nameof(SimulatedXenStore));
        }
    }

    /// <summary>Takes a queued watch event without waiting (tests use it to check that nothing fired).</summary>
    public bool TryReadWatch(out XenStoreWatchEvent watchEvent) => _events.Reader.TryRead(out watchEvent);

    public string GetDomainPath(uint domainId) => XenStorePath.DomainPath(domainId);

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            _server.Disconnect(this);
        }
    }

    internal void Enqueue(XenStoreWatchEvent watchEvent) => _events.Writer.TryWrite(watchEvent);

    internal void CompleteEvents() => _events.Writer.TryComplete();

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
}
