using Microsoft.Extensions.Logging.Abstractions;
using XenDisk.Abi;
using XenDisk.Backend.ControlPlane;
using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Policies;
using XenDisk.Storage;
using XenDisk.TestFrontend;
using XenDisk.Xen.Simulated;

namespace XenDisk.Service.Tests;

/// <summary>
/// A storage error under a copy-on-write overlay, through the whole data path: a blkfront-like guest
/// on the simulated hypervisor, the backend's rings, a bitmap overlay whose storage fails the writes
/// of one range. The guest gets BLKIF_RSP_ERROR for the request that met the error, and only for it.
/// </summary>
public sealed class CopyOnWriteStorageFaultTests
{
    private const int GuestDeviceId = 51712; // xvda
    private const long DiskBytes = 4L << 20;
    private const long FailingOffset = 1L << 20;
    private const int FailingLength = 64 * 1024;
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    [Theory]
    [InlineData(IoStatus.IoError)]
    [InlineData(IoStatus.NoSpace)]
    public async Task The_guest_gets_BLKIF_RSP_ERROR_for_the_write_the_storage_failed_and_other_requests_succeed(IoStatus storageError)
    {
        using var baseDevice = new MemoryBlockDevice(DiskBytes);
        new Random(5).NextBytes(baseDevice.Contents);
        byte[] baseContents = baseDevice.Contents.ToArray();
        using var storage = new FailingRangeDevice(new MemoryBlockDevice(BitmapOverlay.RequiredCowSize(DiskBytes)));
        BitmapOverlay overlay = BitmapOverlay.Create(storage, baseDevice, options: new BitmapOverlayOptions { Policy = MetadataPolicy.Flush, OwnsDevices = false });
        // Virtual byte V of a bitmap overlay lives at data_offset + V: this fails the guest's writes to [1 MiB, 1 MiB + 64 KiB).
        storage.Fail(overlay.Header.DataOffset + FailingOffset, FailingLength, storageError);

        using var hypervisor = new SimulatedHypervisor();
        using var toolstack = new SimulatedToolstack(hypervisor);
        await using var backend = new BlockBackend(hypervisor.Platform(hypervisor.Dom0), new OneDiskProvider(overlay),
            new BackendOptions { MaxQueues = 1, RingDrainTimeout = Timeout }, NullLoggerFactory.Instance);
        await backend.StartAsync(CancellationToken.None).WaitAsync(Timeout);
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        DiskAttachment attachment = toolstack.AttachDisk(guest, GuestDeviceId, "overlay-on-failing-storage", readOnly: false);
        await using var frontend = new BlockFrontend(hypervisor, guest, attachment, new FrontendOptions { StateTimeout = Timeout });
        await frontend.ConnectAsync().WaitAsync(Timeout);

        byte[] before = Pattern(1, 8192);
        byte[] failing = Pattern(2, 4096);
        byte[] after = Pattern(3, 8192);
        Assert.Equal(BlkifStatus.Okay, await frontend.WriteAsync(0, before).WaitAsync(Timeout));
        Assert.Equal(BlkifStatus.Error, await frontend.WriteAsync((FailingOffset + 8192) / 512, failing).WaitAsync(Timeout));
        Assert.Equal(1, storage.FailedWrites);
        Assert.Equal(BlkifStatus.Okay, await frontend.WriteAsync((2L << 20) / 512, after).WaitAsync(Timeout));
        // The failed write is no flush failure: the overlay stays writable and its flushes succeed.
        Assert.Equal(BlkifStatus.Okay, await frontend.FlushAsync().WaitAsync(Timeout));

        Assert.Equal(before, await ReadAsync(frontend, 0, before.Length));
        Assert.Equal(after, await ReadAsync(frontend, 2L << 20, after.Length));
        // The grain the failed write went to was never marked as the overlay's: it still reads the base.
        Assert.Equal(baseContents.AsSpan((int)FailingOffset, FailingLength).ToArray(), await ReadAsync(frontend, FailingOffset, FailingLength));

        FrontendDisconnectResult closed = await frontend.DisconnectAsync().WaitAsync(Timeout);
        Assert.True(closed.BackendReachedClosed, "the backend did not reach Closed");
        Assert.Equal(0, frontend.ProtocolViolations);
        await toolstack.DetachDiskAsync(attachment, Timeout);
        await backend.StopAsync(CancellationToken.None).WaitAsync(Timeout);
        Assert.Equal(0, hypervisor.ActiveGrantMappings);
        Assert.Equal(baseContents, baseDevice.Contents.ToArray());
    }

    private static byte[] Pattern(int seed, int length)
    {
        byte[] bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    private static async Task<byte[]> ReadAsync(BlockFrontend frontend, long offset, int length)
    {
        byte[] buffer = new byte[length];
        Assert.Equal(BlkifStatus.Okay, await frontend.ReadAsync(offset / 512, buffer).WaitAsync(Timeout));
        return buffer;
    }

    /// <summary>Hands the backend the one overlay of this test (the backend disposes it on detach).</summary>
    private sealed class OneDiskProvider(IBlockDevice disk) : IDiskProvider
    {
        public IBlockDevice Open(DiskSpecification specification) => disk;
    }

    /// <summary>Storage whose writes overlapping one byte range fail with a chosen status, as a failing disk (EIO) or a full file system (ENOSPC) answers.</summary>
    private sealed class FailingRangeDevice(IBlockDevice inner) : IBlockDevice
    {
        private long _start;
        private long _end;
        private IoStatus _status;
        private int _failedWrites;

        public int FailedWrites => Volatile.Read(ref _failedWrites);

        public BlockDeviceInfo Info => inner.Info;

        public bool CompletesInline => inner.CompletesInline;

        public void Fail(long offset, long length, IoStatus status)
        {
            _start = offset;
            _end = offset + length;
            _status = status;
        }

        public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers) => inner.Read(offset, buffers);

        public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers)
        {
            long length = 0;
            foreach (IoBuffer buffer in buffers)
            {
                length += buffer.Length;
            }
            if (_status != IoStatus.Ok && offset < _end && offset + length > _start)
            {
                Interlocked.Increment(ref _failedWrites);
                return _status;
            }
            return inner.Write(offset, buffers);
        }

        public IoStatus Flush() => inner.Flush();

        public IoStatus Discard(long offset, long length, bool secure) => inner.Discard(offset, length, secure);

        public BlockDeviceInfo Refresh() => inner.Refresh();

        public void Dispose() => inner.Dispose();
    }
}
