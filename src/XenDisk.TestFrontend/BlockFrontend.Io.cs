using XenDisk.Abi;

namespace XenDisk.TestFrontend;

public sealed partial class BlockFrontend
{
    /// <summary>
    /// Reads <paramref name="buffer"/>.Length bytes (a multiple of 512) from 512-byte sector
    /// <paramref name="sector"/>. Split into requests of at most the negotiated segments (11, or
    /// the indirect maximum), each on the given queue or round-robin. Returns BLKIF_RSP_OKAY, or
    /// the first error status a request got.
    /// </summary>
    public Task<short> ReadAsync(long sector, Memory<byte> buffer, int queue = -1) =>
        TransferAsync(BlkifOperation.Read, sector, default, buffer, queue);

    /// <summary>Writes <paramref name="data"/> (a multiple of 512 bytes) at 512-byte sector <paramref name="sector"/>.</summary>
    public Task<short> WriteAsync(long sector, ReadOnlyMemory<byte> data, int queue = -1) =>
        TransferAsync(BlkifOperation.Write, sector, data, default, queue);

    /// <summary>BLKIF_OP_FLUSH_DISKCACHE. Sent even when the backend did not offer feature-flush-cache, so that its answer can be tested.</summary>
    public Task<short> FlushAsync(int queue = -1) =>
        PickRing(queue).SubmitControlAsync(BlkifOperation.FlushDiskCache, 0, 0, 0);

    /// <summary>BLKIF_OP_WRITE_BARRIER carrying <paramref name="data"/>, which must fit in one request.</summary>
    public Task<short> WriteBarrierAsync(long sector, ReadOnlyMemory<byte> data, int queue = -1)
    {
        ValidateLength(data.Length);
        if (data.Length > MaxBytesPerRequest)
        {
            throw new ArgumentOutOfRangeException(nameof(data), "A barrier must fit in one request.");
        }

        return PickRing(queue).SubmitDataAsync(BlkifOperation.WriteBarrier, sector, data, default, NegotiatedFrontendFeatures.MaxSegmentsPerRequest);
    }

    /// <summary>BLKIF_OP_DISCARD of <paramref name="count"/> 512-byte sectors (BLKIF_DISCARD_SECURE when <paramref name="secure"/>).</summary>
    public Task<short> DiscardAsync(long sector, long count, bool secure = false, int queue = -1) =>
        PickRing(queue).SubmitControlAsync(BlkifOperation.Discard, sector, count, secure ? BlkifLimits.DiscardSecure : (byte)0);

    private int MaxBytesPerRequest => NegotiatedFrontendFeatures.MaxSegmentsPerRequest * XenPage.Size;

    private async Task<short> TransferAsync(byte operation, long sector, ReadOnlyMemory<byte> writeData, Memory<byte> readBuffer, int queue)
    {
        int length = operation == BlkifOperation.Read ? readBuffer.Length : writeData.Length;
        ValidateLength(length);
        int maxSegments = NegotiatedFrontendFeatures.MaxSegmentsPerRequest;
        int chunkBytes = MaxBytesPerRequest;
        int requests = (length + chunkBytes - 1) / chunkBytes;
        var pending = new Task<short>[requests];
        for (int i = 0; i < requests; i++)
        {
            int offset = i * chunkBytes;
            int size = Math.Min(chunkBytes, length - offset);
            long chunkSector = sector + (offset >> BlkifLimits.SectorShift);
            FrontendRing ring = PickRing(queue);
            pending[i] = operation == BlkifOperation.Read
                ? ring.SubmitDataAsync(operation, chunkSector, default, readBuffer.Slice(offset, size), maxSegments)
                : ring.SubmitDataAsync(operation, chunkSector, writeData.Slice(offset, size), default, maxSegments);
        }

        short[] statuses = await Task.WhenAll(pending).ConfigureAwait(false);
        foreach (short status in statuses)
        {
            if (status != BlkifStatus.Okay)
            {
                return status;
            }
        }

        return BlkifStatus.Okay;
    }

    private static void ValidateLength(int length)
    {
        if (length <= 0 || length % BlkifLimits.SectorSize != 0)
        {
            throw new ArgumentException("I/O must be a positive multiple of 512 bytes.", nameof(length));
        }
    }
}
