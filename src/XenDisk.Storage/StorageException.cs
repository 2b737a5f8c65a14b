namespace XenDisk.Storage;

/// <summary>Opening or creating storage failed; the message is meant for an operator (it ends up in xenstore's "error" node).</summary>
public sealed class StorageException : Exception
{
    public StorageException(string message, int errno = 0, Exception? inner = null)
        : base(message, inner)
    {
        Errno = errno;
    }

    /// <summary>The positive errno behind the failure, or 0.</summary>
    public int Errno { get; }
}
