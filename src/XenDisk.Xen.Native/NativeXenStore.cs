using System.Text;
using Tmds.Linux;
using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

/// <summary>
/// <see cref="IXenStore"/> over libxenstore (xenstored's unix socket, or /dev/xen/xenbus in a
/// driver domain). libxenstore serialises requests on one connection itself, so every member may
/// be called from any thread. Watch events are moved by a background thread into a channel; see
/// NativeXenStore.Watches.cs. Every failure throws <see cref="XenStoreException"/> naming the
/// call and the path, except that a missing node reads and lists as null and removes as success.
/// Ownership: the xs_handle belongs to this object; memory libxenstore returns is copied into
/// managed strings and freed at once.
/// </summary>
public sealed partial class NativeXenStore : IXenStore
{
    private readonly SafeXenStoreHandle _handle;
    private int _disposed;

    private NativeXenStore(SafeXenStoreHandle handle)
    {
        _handle = handle;
        _watchEventFd = SafeEventFdHandle.Create();
        try
        {
            StartWatchThread();
        }
        catch
        {
            _watchEventFd.Dispose();
            throw;
        }
    }

    /// <summary>xs_open(0). Throws <see cref="XenException"/> naming xs_open when xenstore cannot be reached.</summary>
    public static NativeXenStore Open()
    {
        SafeXenStoreHandle handle = Interop.XenStore.xs_open(0);
        if (handle.IsInvalid)
        {
            int errno = NativeErrno.Last();
            handle.Dispose();
            throw new XenException("xs_open", errno, "cannot reach xenstored (socket) or /dev/xen/xenbus");
        }

        try
        {
            return new NativeXenStore(handle);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    public unsafe string? Read(XenStoreTransaction transaction, string path)
    {
        uint length;
        byte* value = Interop.XenStore.xs_read(_handle, transaction.Id, path, &length);
        if (value == null)
        {
            int errno = NativeErrno.Last();
            if (errno == LibC.ENOENT)
            {
                return null;
            }

            NativeErrno.ThrowXenStoreException("xs_read", path, errno);
        }

        try
        {
            return Encoding.UTF8.GetString(value, checked((int)length));
        }
        finally
        {
            NativeMemory.Free(value);
        }
    }

    public unsafe void Write(XenStoreTransaction transaction, string path, string value)
    {
        // Values go on the wire as bytes without a terminator; xenstore keys written by libxl and
        // the frontends are ASCII, which UTF-8 leaves unchanged.
        byte[] bytes = Encoding.UTF8.GetBytes(value);
        fixed (byte* data = bytes)
        {
            if (!Interop.XenStore.xs_write(_handle, transaction.Id, path, data, (uint)bytes.Length))
            {
                NativeErrno.ThrowXenStoreException("xs_write", path, NativeErrno.Last());
            }
        }
    }

    public void Mkdir(XenStoreTransaction transaction, string path)
    {
        if (!Interop.XenStore.xs_mkdir(_handle, transaction.Id, path))
        {
            NativeErrno.ThrowXenStoreException("xs_mkdir", path, NativeErrno.Last());
        }
    }

    public void Remove(XenStoreTransaction transaction, string path)
    {
        if (!Interop.XenStore.xs_rm(_handle, transaction.Id, path))
        {
            // xenstored answers ENOENT only when the parent is missing as well; either way the
            // node is gone, which is what the caller asked for.
            int errno = NativeErrno.Last();
            if (errno != LibC.ENOENT)
            {
                NativeErrno.ThrowXenStoreException("xs_rm", path, errno);
            }
        }
    }

    public unsafe IReadOnlyList<string>? Directory(XenStoreTransaction transaction, string path)
    {
        uint count;
        byte** names = Interop.XenStore.xs_directory(_handle, transaction.Id, path, &count);
        if (names == null)
        {
            int errno = NativeErrno.Last();
            if (errno == LibC.ENOENT)
            {
                return null;
            }

            NativeErrno.ThrowXenStoreException("xs_directory", path, errno);
        }

        try
        {
            var result = new string[count];
            for (int i = 0; i < result.Length; i++)
            {
                result[i] = Utf8String(names[i]);
            }

            return result;
        }
        finally
        {
            // Pointers and strings share one allocation.
            NativeMemory.Free(names);
        }
    }

    public unsafe IReadOnlyList<XenStorePermission>? GetPermissions(XenStoreTransaction transaction, string path)
    {
        uint count;
        Interop.XenStore.XsPermissions* permissions = Interop.XenStore.xs_get_permissions(_handle, transaction.Id, path, &count);
        if (permissions == null)
        {
            int errno = NativeErrno.Last();
            if (errno == LibC.ENOENT)
            {
                return null;
            }

            NativeErrno.ThrowXenStoreException("xs_get_permissions", path, errno);
        }

        try
        {
            var result = new XenStorePermission[count];
            for (int i = 0; i < result.Length; i++)
            {
                result[i] = XenStorePermissionText.FromNative(permissions[i]);
            }

            return result;
        }
        finally
        {
            NativeMemory.Free(permissions);
        }
    }

    public unsafe void SetPermissions(XenStoreTransaction transaction, string path, IReadOnlyList<XenStorePermission> permissions)
    {
        ArgumentNullException.ThrowIfNull(permissions);
        if (permissions.Count == 0)
        {
            // xenstored needs at least the owner entry; an empty list would be refused as EINVAL
            // after a round trip, so refuse it here with the same errno.
            NativeErrno.ThrowXenStoreException("xs_set_permissions", path, LibC.EINVAL);
        }

        var native = new Interop.XenStore.XsPermissions[permissions.Count];
        for (int i = 0; i < native.Length; i++)
        {
            native[i] = XenStorePermissionText.ToNative(permissions[i]);
        }

        fixed (Interop.XenStore.XsPermissions* nativePointer = native)
        {
            if (!Interop.XenStore.xs_set_permissions(_handle, transaction.Id, path, nativePointer, (uint)native.Length))
            {
                NativeErrno.ThrowXenStoreException("xs_set_permissions", path, NativeErrno.Last());
            }
        }
    }

    public XenStoreTransaction BeginTransaction()
    {
        uint id = Interop.XenStore.xs_transaction_start(_handle);
        if (id == XenStoreTransaction.None.Id)
        {
            NativeErrno.ThrowXenStoreException("xs_transaction_start", "/", NativeErrno.Last());
        }

        return new XenStoreTransaction(id);
    }

    public bool EndTransaction(XenStoreTransaction transaction, bool abort = false)
    {
        if (Interop.XenStore.xs_transaction_end(_handle, transaction.Id, abort))
        {
            return true;
        }

        int errno = NativeErrno.Last();
        if (errno == LibC.EAGAIN && !abort)
        {
            // Another connection changed something this transaction read: redo it from the start.
            return false;
        }

        throw new XenStoreException("xs_transaction_end", $"(transaction {transaction.Id})", errno);
    }

    public void Watch(string path, string token)
    {
        if (!Interop.XenStore.xs_watch(_handle, path, token))
        {
            NativeErrno.ThrowXenStoreException("xs_watch", path, NativeErrno.Last());
        }
    }

    public void Unwatch(string path, string token)
    {
        if (!Interop.XenStore.xs_unwatch(_handle, path, token))
        {
            NativeErrno.ThrowXenStoreException("xs_unwatch", path, NativeErrno.Last());
        }
    }

    public unsafe string GetDomainPath(uint domainId)
    {
        byte* path = Interop.XenStore.xs_get_domain_path(_handle, domainId);
        if (path == null)
        {
            NativeErrno.ThrowXenStoreException("xs_get_domain_path", $"domain {domainId}", NativeErrno.Last());
        }

        try
        {
            return Utf8String(path);
        }
        finally
        {
            NativeMemory.Free(path);
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        StopWatchThread();
        _handle.Dispose();
        _watchEventFd.Dispose();
    }

    private static unsafe string Utf8String(byte* text) =>
        System.Runtime.InteropServices.Marshal.PtrToStringUTF8((nint)text) ?? string.Empty;
}
