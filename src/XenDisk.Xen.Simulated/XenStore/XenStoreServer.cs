using Tmds.Linux;

namespace XenDisk.Xen.Simulated.XenStore;

/// <summary>
/// The simulated xenstored: one tree, the watches of every connection, and transactions.
/// Like xenstored it handles one request at a time (one lock), so every operation is atomic and
/// watch events are queued in the order the changes happened.
/// Transactions work on a private copy of the tree taken at start. The paths a transaction read,
/// listed or wrote form its conflict set; at commit, if any of them changed in the live tree
/// after the start, the commit fails with EAGAIN and nothing is applied (xenstored's generation
/// check), otherwise its operations are replayed on the live tree, which fires their watches.
/// </summary>
internal sealed class XenStoreServer : IXenStoreTreeObserver
{
    private readonly Lock _lock = new();
    private readonly XenStoreTree _tree = XenStoreTree.CreateEmpty();
    private readonly Dictionary<string, long> _changedAt = new(StringComparer.Ordinal);
    private readonly List<WatchRegistration> _watches = [];
    private readonly Dictionary<uint, TransactionState> _transactions = [];
    private readonly List<SimulatedXenStore> _connections = [];
    private long _generation;
    private uint _nextTransactionId = 1;
    private int _forcedConflicts;

    /// <summary>Nodes in the live tree (for leak checks in tests).</summary>
    public int NodeCount
    {
        get
        {
            lock (_lock)
            {
                var all = new List<XenStoreNode>();
                _tree.Root.CollectSubtree(all);
                return all.Count;
            }
        }
    }

    public SimulatedXenStore Connect(SimulatedDomain domain)
    {
        lock (_lock)
        {
            var connection = new SimulatedXenStore(this, domain.Id);
            _connections.Add(connection);
            return connection;
        }
    }

    public void Disconnect(SimulatedXenStore connection)
    {
        lock (_lock)
        {
            _connections.Remove(connection);
            _watches.RemoveAll(w => w.Connection == connection);
            foreach (uint id in _transactions.Where(t => t.Value.Owner == connection).Select(t => t.Key).ToList())
            {
                _transactions.Remove(id);
            }
        }

        connection.CompleteEvents();
    }

    /// <summary>A destroyed domain's connections go away with it.</summary>
    public void DisconnectDomain(uint domainId)
    {
        List<SimulatedXenStore> doomed;
        lock (_lock)
        {
            doomed = _connections.Where(c => c.DomainId == domainId).ToList();
        }

        foreach (SimulatedXenStore connection in doomed)
        {
            connection.Dispose();
        }
    }

    /// <summary>Test hook: the next <paramref name="count"/> commits fail with EAGAIN as if they had conflicted.</summary>
    public void ForceConflicts(int count)
    {
        lock (_lock)
        {
            _forcedConflicts += count;
        }
    }

    public string? Read(uint domainId, SimulatedXenStore? connection, XenStoreTransaction transaction, string path)
    {
        string absolute = XenStorePath.Resolve("read", path, domainId);
        lock (_lock)
        {
            return TreeFor(connection, transaction, absolute, out IXenStoreTreeObserver observer).Read(domainId, absolute, observer);
        }
    }

    public IReadOnlyList<string>? Directory(uint domainId, SimulatedXenStore? connection, XenStoreTransaction transaction, string path)
    {
        string absolute = XenStorePath.Resolve("directory", path, domainId);
        lock (_lock)
        {
            return TreeFor(connection, transaction, absolute, out IXenStoreTreeObserver observer).Directory(domainId, absolute, observer);
        }
    }

    public IReadOnlyList<XenStorePermission>? GetPermissions(uint domainId, SimulatedXenStore? connection, XenStoreTransaction transaction, string path)
    {
        string absolute = XenStorePath.Resolve("get_permissions", path, domainId);
        lock (_lock)
        {
            return TreeFor(connection, transaction, absolute, out IXenStoreTreeObserver observer).GetPermissions(domainId, absolute, observer);
        }
    }

    public void Write(uint domainId, SimulatedXenStore? connection, XenStoreTransaction transaction, string path, string value)
    {
        ArgumentNullException.ThrowIfNull(value);
        Apply(domainId, connection, transaction, new Operation(OperationKind.Write, XenStorePath.Resolve("write", path, domainId), value, null));
    }

    public void Mkdir(uint domainId, SimulatedXenStore? connection, XenStoreTransaction transaction, string path) =>
        Apply(domainId, connection, transaction, new Operation(OperationKind.Mkdir, XenStorePath.Resolve("mkdir", path, domainId), null, null));

    public void Remove(uint domainId, SimulatedXenStore? connection, XenStoreTransaction transaction, string path) =>
        Apply(domainId, connection, transaction, new Operation(OperationKind.Remove, XenStorePath.Resolve("rm", path, domainId), null, null));

    public void SetPermissions(uint domainId, SimulatedXenStore? connection, XenStoreTransaction transaction, string path, IReadOnlyList<XenStorePermission> permissions)
    {
        ArgumentNullException.ThrowIfNull(permissions);
        Apply(domainId, connection, transaction, new Operation(OperationKind.SetPermissions, XenStorePath.Resolve("set_permissions", path, domainId), null, [.. permissions]));
    }

    public XenStoreTransaction BeginTransaction(SimulatedXenStore connection)
    {
        lock (_lock)
        {
            uint id = _nextTransactionId++;
            if (_nextTransactionId == 0)
            {
                _nextTransactionId = 1;
            }

            _transactions.Add(id, new TransactionState(connection, _tree.Clone(), _generation));
            return new XenStoreTransaction(id);
        }
    }

    public bool EndTransaction(SimulatedXenStore connection, XenStoreTransaction transaction, bool abort)
    {
        lock (_lock)
        {
            if (!_transactions.TryGetValue(transaction.Id, out TransactionState? state) || state.Owner != connection)
            {
                throw new XenStoreException("transaction_end", string.Empty, LibC.ENOENT);
            }

            _transactions.Remove(transaction.Id);
            if (abort)
            {
                return true;
            }

            if (_forcedConflicts > 0)
            {
                _forcedConflicts--;
                return false;
            }

            foreach (string path in state.Touched)
            {
                if (_changedAt.TryGetValue(path, out long changed) && changed > state.StartGeneration)
                {
                    return false;
                }
            }

            foreach (Operation operation in state.Log)
            {
                Execute(_tree, state.Owner.DomainId, operation, this);
            }

            return true;
        }
    }

    public void Watch(SimulatedXenStore connection, string path, string token)
    {
        ArgumentNullException.ThrowIfNull(token);
        bool relative = !path.StartsWith('/') && !path.StartsWith('@');
        string absolute;
        if (path.StartsWith('@'))
        {
            absolute = XenStorePath.IsSpecial(path) ? path : throw new XenStoreException("watch", path, LibC.EINVAL);
        }
        else
        {
            absolute = XenStorePath.Resolve("watch", path, connection.DomainId);
        }

        lock (_lock)
        {
            foreach (WatchRegistration existing in _watches)
            {
                if (existing.Connection == connection && existing.Path == absolute && existing.Token == token)
                {
                    throw new XenStoreException("watch", path, LibC.EEXIST);
                }
            }

            var watch = new WatchRegistration(connection, absolute, token, relative ? XenStorePath.DomainPath(connection.DomainId) + "/" : null);
            _watches.Add(watch);

            // xs_watch: every new watch fires once, with the path as it was given.
            connection.Enqueue(new XenStoreWatchEvent(path, token));
        }
    }

    public void Unwatch(SimulatedXenStore connection, string path, string token)
    {
        string absolute = path.StartsWith('@') ? path : XenStorePath.Resolve("unwatch", path, connection.DomainId);
        lock (_lock)
        {
            int index = _watches.FindIndex(w => w.Connection == connection && w.Path == absolute && w.Token == token);
            if (index < 0)
            {
                throw new XenStoreException("unwatch", path, LibC.ENOENT);
            }

            _watches.RemoveAt(index);
        }
    }

    /// <summary>Fires @introduceDomain or @releaseDomain.</summary>
    public void FireSpecial(string specialPath)
    {
        lock (_lock)
        {
            foreach (WatchRegistration watch in _watches)
            {
                if (watch.Path == specialPath)
                {
                    watch.Connection.Enqueue(new XenStoreWatchEvent(specialPath, watch.Token));
                }
            }
        }
    }

    void IXenStoreTreeObserver.Accessed(string path)
    {
    }

    void IXenStoreTreeObserver.Modified(XenStoreNode node, bool created, bool announce)
    {
        long generation = ++_generation;
        _changedAt[node.Path] = generation;
        if (created && node.Parent is not null)
        {
            _changedAt[node.Parent.Path] = generation;
        }

        if (!announce)
        {
            return;
        }

        foreach (WatchRegistration watch in _watches)
        {
            if (!XenStorePath.IsSpecial(watch.Path) && XenStorePath.IsAtOrBelow(node.Path, watch.Path) && CanRead(watch, node))
            {
                watch.Connection.Enqueue(new XenStoreWatchEvent(watch.Present(node.Path), watch.Token));
            }
        }
    }

    void IXenStoreTreeObserver.Removed(XenStoreNode root)
    {
        long generation = ++_generation;
        var removed = new List<XenStoreNode>();
        root.CollectSubtree(removed);
        foreach (XenStoreNode node in removed)
        {
            _changedAt[node.Path] = generation;
        }

        if (root.Parent is not null)
        {
            _changedAt[root.Parent.Path] = generation;
        }

        foreach (WatchRegistration watch in _watches)
        {
            if (XenStorePath.IsSpecial(watch.Path))
            {
                continue;
            }

            if (XenStorePath.IsAtOrBelow(root.Path, watch.Path))
            {
                if (CanRead(watch, root))
                {
                    watch.Connection.Enqueue(new XenStoreWatchEvent(watch.Present(root.Path), watch.Token));
                }
            }
            else if (XenStorePath.IsAtOrBelow(watch.Path, root.Path))
            {
                // A watch on a node inside the removed subtree sees its own node go.
                XenStoreNode? watched = removed.Find(n => n.Path == watch.Path);
                if (watched is not null && CanRead(watch, watched))
                {
                    watch.Connection.Enqueue(new XenStoreWatchEvent(watch.Present(watched.Path), watch.Token));
                }
            }
        }
    }

    private static bool CanRead(WatchRegistration watch, XenStoreNode node) =>
        (XenStoreNode.AccessFor(watch.Connection.DomainId, node.Permissions) & XenStoreAccess.Read) != 0;

    private void Apply(uint domainId, SimulatedXenStore? connection, XenStoreTransaction transaction, Operation operation)
    {
        lock (_lock)
        {
            if (transaction == XenStoreTransaction.None)
            {
                Execute(_tree, domainId, operation, this);
                return;
            }

            TransactionState state = GetTransaction(connection, transaction, operation.Path);
            Execute(state.Tree, domainId, operation, state);
            state.Log.Add(operation);
        }
    }

    private static void Execute(XenStoreTree tree, uint domainId, Operation operation, IXenStoreTreeObserver observer)
    {
        switch (operation.Kind)
        {
            case OperationKind.Write:
                tree.Write(domainId, operation.Path, operation.Value!, observer);
                break;
            case OperationKind.Mkdir:
                tree.Mkdir(domainId, operation.Path, observer);
                break;
            case OperationKind.Remove:
                tree.Remove(domainId, operation.Path, observer);
                break;
            case OperationKind.SetPermissions:
                tree.SetPermissions(domainId, operation.Path, operation.Permissions!, observer);
                break;
        }
    }

    private XenStoreTree TreeFor(SimulatedXenStore? connection, XenStoreTransaction transaction, string path, out IXenStoreTreeObserver observer)
    {
        if (transaction == XenStoreTransaction.None)
        {
            observer = this;
            return _tree;
        }

        TransactionState state = GetTransaction(connection, transaction, path);
        observer = state;
        return state.Tree;
    }

    private TransactionState GetTransaction(SimulatedXenStore? connection, XenStoreTransaction transaction, string path)
    {
        if (!_transactions.TryGetValue(transaction.Id, out TransactionState? state) || state.Owner != connection)
        {
            throw new XenStoreException("transaction", path, LibC.ENOENT);
        }

        return state;
    }

    private enum OperationKind
    {
        Write,
        Mkdir,
        Remove,
        SetPermissions,
    }

    private sealed record Operation(OperationKind Kind, string Path, string? Value, XenStorePermission[]? Permissions);

    private sealed record WatchRegistration(SimulatedXenStore Connection, string Path, string Token, string? RelativePrefix)
    {
        /// <summary>A watch registered with a relative path gets relative event paths, as from xenstored.</summary>
        public string Present(string absolutePath) =>
            RelativePrefix is not null && absolutePath.StartsWith(RelativePrefix, StringComparison.Ordinal)
                ? absolutePath[RelativePrefix.Length..]
                : absolutePath;
    }

    private sealed class TransactionState(SimulatedXenStore owner, XenStoreTree tree, long startGeneration) : IXenStoreTreeObserver
    {
        public SimulatedXenStore Owner { get; } = owner;

        public XenStoreTree Tree { get; } = tree;

        public long StartGeneration { get; } = startGeneration;

        public HashSet<string> Touched { get; } = new(StringComparer.Ordinal);

        public List<Operation> Log { get; } = [];

        public void Accessed(string path) => Touched.Add(path);

        public void Modified(XenStoreNode node, bool created, bool announce)
        {
            Touched.Add(node.Path);
            if (created && node.Parent is not null)
            {
                Touched.Add(node.Parent.Path);
            }
        }

        public void Removed(XenStoreNode root)
        {
            var removed = new List<XenStoreNode>();
            root.CollectSubtree(removed);
            foreach (XenStoreNode node in removed)
            {
                Touched.Add(node.Path);
            }

            if (root.Parent is not null)
            {
                Touched.Add(root.Parent.Path);
            }
        }
    }
}
