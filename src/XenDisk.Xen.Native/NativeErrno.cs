using System.Runtime.InteropServices;
using Tmds.Linux;

namespace XenDisk.Xen.Native;

/// <summary>errno as the bindings see it, and the one place where a control-path failure becomes an exception.</summary>
internal static class NativeErrno
{
    /// <summary>
    /// The errno saved by the last SetLastError import on this thread. A library that reports a
    /// failure without setting errno (a failed allocation deep inside libxenstore can) yields EIO,
    /// so that a failure is never mistaken for success.
    /// </summary>
    internal static int Last()
    {
        int errno = Marshal.GetLastPInvokeError();
        return errno > 0 ? errno : LibC.EIO;
    }

    /// <summary>Throws <see cref="XenException"/> for <paramref name="operation"/> with the last errno. Kept out of line so callers stay small.</summary>
    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    internal static void ThrowXenException(string operation, string? detail = null) =>
        throw new XenException(operation, Last(), detail);

    /// <summary>Throws <see cref="XenStoreException"/> for a xenstore call on <paramref name="path"/> with the last errno.</summary>
    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    internal static void ThrowXenStoreException(string operation, string path, int errno) =>
        throw new XenStoreException(operation, path, errno);
}
