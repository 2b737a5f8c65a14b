using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native;

/// <summary>Reference counting on a handle without the exception DangerousAddRef throws once it is closed, for hot paths.</summary>
internal static class SafeHandleReferences
{
    /// <summary>Takes a reference unless the handle is closed; the caller must DangerousRelease when this returns true.</summary>
    internal static bool TryAddRef(SafeHandle handle)
    {
        if (handle.IsClosed)
        {
            return false;
        }

        bool added = false;
        try
        {
            handle.DangerousAddRef(ref added);
        }
        catch (ObjectDisposedException)
        {
            // Lost a race with Dispose: the caller reports the handle as closed.
        }

        return added;
    }
}
