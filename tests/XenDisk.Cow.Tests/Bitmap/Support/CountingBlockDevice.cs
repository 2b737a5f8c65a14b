using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Bitmap.Support;

/// <summary>Counts reads per device, so tests can see how often a base was read.</summary>
public sealed class CountingBlockDevice(IBlockDevice inner) : IBlockDevice
{
    private long _reads;
    private long _writes;

    public long Reads => Interlocked.Read(ref _reads);

    public long Writes => Interlocked.Read(ref _writes);

    public BlockDeviceInfo Info => inner.Info;

    public bool CompletesInline => inner.CompletesInline;

    public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        Interlocked.Increment(ref _reads);
        return inner.Read(offset, buffers);
    }

    public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        Interlocked.Increment(ref _writes);
        return inner.Write(offset, buffers);
    }

    public IoStatus Flush() => inner.Flush();

    public IoStatus Discard(long offset, long length, bool secure) => inner.Discard(offset, length, secure);

    public BlockDeviceInfo Refresh() => inner.Refresh();

    public void Dispose() => inner.Dispose();
}
