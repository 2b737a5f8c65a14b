using XenDisk.Storage;

namespace XenDisk.Cow.Provider;

/// <summary>
/// A device whose file is deleted once the device is disposed: the storage under a transient bitmap
/// overlay, whose contents are never meant to outlive the disk. Ownership: owns the inner device.
/// </summary>
internal sealed class FileRemovingDevice : IBlockDevice
{
    private readonly IBlockDevice _inner;
    private readonly string _path;
    private int _disposed;

    public FileRemovingDevice(IBlockDevice inner, string path)
    {
        _inner = inner;
        _path = path;
    }

    public BlockDeviceInfo Info => _inner.Info;

    public bool CompletesInline => _inner.CompletesInline;

    public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers) => _inner.Read(offset, buffers);

    public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers) => _inner.Write(offset, buffers);

    public IoStatus Flush() => _inner.Flush();

    public IoStatus Discard(long offset, long length, bool secure) => _inner.Discard(offset, length, secure);

    public BlockDeviceInfo Refresh() => _inner.Refresh();

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        _inner.Dispose();
        try
        {
            File.Delete(_path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Only wasted space: the next start of a transient overlay recreates the file's contents.
        }
    }
}
