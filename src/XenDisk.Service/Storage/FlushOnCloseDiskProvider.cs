using Microsoft.Extensions.Logging;
using XenDisk.Storage;

namespace XenDisk.Service.Storage;

/// <summary>
/// Wraps whatever <see cref="IDiskProvider"/> is registered so that every writable disk is flushed
/// before it is closed. The backend closes a disk when its device goes away and when the service stops;
/// a guest that did not flush (or was not given the chance) still finds its completed writes on stable
/// storage after a clean restart. A failed final flush is logged: there is nobody left to answer.
/// </summary>
internal sealed class FlushOnCloseDiskProvider(IDiskProvider inner, ILogger logger) : IDiskProvider
{
    public IBlockDevice Open(DiskSpecification specification)
    {
        IBlockDevice device = inner.Open(specification);
        return device.Info.ReadOnly ? device : new FlushOnCloseBlockDevice(device, specification.Target, logger);
    }

    private sealed class FlushOnCloseBlockDevice(IBlockDevice inner, string target, ILogger logger) : IBlockDevice
    {
        private int _disposed;

        public BlockDeviceInfo Info => inner.Info;

        public bool CompletesInline => inner.CompletesInline;

        public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers) => inner.Read(offset, buffers);

        public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers) => inner.Write(offset, buffers);

        public IoStatus Flush() => inner.Flush();

        public IoStatus Discard(long offset, long length, bool secure) => inner.Discard(offset, length, secure);

        public BlockDeviceInfo Refresh() => inner.Refresh();

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) != 0)
            {
                return;
            }

            try
            {
                IoStatus status = inner.Flush();
                if (status != IoStatus.Ok)
                {
                    ServiceLog.FinalFlushFailed(logger, target, status.ToString());
                }
            }
            finally
            {
                inner.Dispose();
            }
        }
    }
}
