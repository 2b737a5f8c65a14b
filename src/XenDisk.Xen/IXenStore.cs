namespace XenDisk.Xen;

/// <summary>A xenstore transaction id; <see cref="None"/> (0) means "outside any transaction" (XBT_NULL).</summary>
public readonly record struct XenStoreTransaction(uint Id)
{
    public static XenStoreTransaction None => default;
}

/// <summary>One watch firing: the path that changed (or the watched path itself, on registration) and the token.</summary>
public readonly record struct XenStoreWatchEvent(string Path, string Token);

/// <summary>xenstore permission kinds (XS_PERM_*).</summary>
[Flags]
public enum XenStoreAccess
{
    None = 0,
    Read = 1,
    Write = 2,
    Both = Read | Write,
}

/// <summary>One entry of a node's permission list: the first entry names the owner and the default for everyone else.</summary>
public readonly record struct XenStorePermission(uint DomainId, XenStoreAccess Access);

/// <summary>
/// A xenstore connection (libxenstore: struct xs_handle). Errors throw <see cref="XenStoreException"/>
/// carrying the errno (EACCES, EINVAL, EAGAIN for a conflicting transaction, ...), except that reading
/// or listing a missing node returns null (the common case when probing optional keys).
/// Watches (xs_watch) fire once when registered and then on every write or removal at or below the path.
/// Thread safety: all members may be used from any thread.
/// </summary>
public interface IXenStore : IDisposable
{
    /// <summary>xs_read; null when the node does not exist.</summary>
    string? Read(XenStoreTransaction transaction, string path);

    /// <summary>xs_write; creates missing parents.</summary>
    void Write(XenStoreTransaction transaction, string path, string value);

    /// <summary>xs_mkdir.</summary>
    void Mkdir(XenStoreTransaction transaction, string path);

    /// <summary>xs_rm: removes the node and everything below it; removing a missing node is not an error.</summary>
    void Remove(XenStoreTransaction transaction, string path);

    /// <summary>xs_directory: child names; null when the node does not exist.</summary>
    IReadOnlyList<string>? Directory(XenStoreTransaction transaction, string path);

    /// <summary>xs_get_permissions; null when the node does not exist.</summary>
    IReadOnlyList<XenStorePermission>? GetPermissions(XenStoreTransaction transaction, string path);

    /// <summary>xs_set_permissions.</summary>
    void SetPermissions(XenStoreTransaction transaction, string path, IReadOnlyList<XenStorePermission> permissions);

    /// <summary>xs_transaction_start.</summary>
    XenStoreTransaction BeginTransaction();

    /// <summary>xs_transaction_end: returns false when the transaction conflicted (EAGAIN) and must be retried.
    /// With <paramref name="abort"/> set it discards the changes and returns true.</summary>
    bool EndTransaction(XenStoreTransaction transaction, bool abort = false);

    /// <summary>xs_watch: events arrive through <see cref="ReadWatchAsync"/>.</summary>
    void Watch(string path, string token);

    /// <summary>xs_unwatch. Events already queued for the watch may still be read.</summary>
    void Unwatch(string path, string token);

    /// <summary>xs_read_watch: the next watch event of this connection.</summary>
    ValueTask<XenStoreWatchEvent> ReadWatchAsync(CancellationToken cancellationToken);

    /// <summary>xs_get_domain_path: "/local/domain/{domid}".</summary>
    string GetDomainPath(uint domainId);
}
