namespace XenDisk.Storage;

/// <summary>
/// A disk that stores nothing, for data-plane benchmarks: every operation completes at once without
/// touching data. Reads leave the caller's buffers untouched (they do not read zeros), writes are
/// dropped, flush and discard succeed. Range and read-only checks are still made, so the data
/// plane sees the same answers to bad requests as from a real device. Never use it where data
/// must read back.
/// </summary>
public sealed class NullBlockDevice : IBlockDevice
{
    private readonly BlockDeviceInfo _info;

    /// <param name="sizeBytes">A multiple of <paramref name="logicalSectorSize"/>.</param>
    /// <param name="logicalSectorSize">512 or 4096 (any power of two from 512 to 65536).</param>
    /// <param name="physicalSectorSize">0 (the default) means the logical sector size.</param>
    /// <param name="readOnly">Refuse writes and discards with <see cref="IoStatus.ReadOnly"/>.</param>
    public NullBlockDevice(long sizeBytes, int logicalSectorSize = 512, int physicalSectorSize = 0, bool readOnly = false)
    {
        if (physicalSectorSize == 0)
        {
            physicalSectorSize = logicalSectorSize;
        }
        IoRange.ValidateGeometry(sizeBytes, logicalSectorSize, physicalSectorSize);
        _info = new BlockDeviceInfo
        {
            SizeBytes = sizeBytes,
            LogicalSectorSize = logicalSectorSize,
            PhysicalSectorSize = physicalSectorSize,
            ReadOnly = readOnly,
            SupportsDiscard = true,
            SupportsSecureDiscard = true,
            DiscardZeroes = false,
            DiscardGranularity = logicalSectorSize,
            HasVolatileCache = false,
            Description = $"null ({sizeBytes} bytes, data is discarded)",
        };
    }

    public BlockDeviceInfo Info => _info;

    public bool CompletesInline => true;

    public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers) =>
        IoRange.Check(offset, buffers, _info.SizeBytes, _info.LogicalSectorSize, out _);

    public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers) =>
        _info.ReadOnly ? IoStatus.ReadOnly : IoRange.Check(offset, buffers, _info.SizeBytes, _info.LogicalSectorSize, out _);

    public IoStatus Flush() => IoStatus.Ok;

    public IoStatus Discard(long offset, long length, bool secure) =>
        _info.ReadOnly ? IoStatus.ReadOnly
        : IoRange.IsValid(offset, length, _info.SizeBytes, _info.LogicalSectorSize) ? IoStatus.Ok
        : IoStatus.OutOfRange;

    public BlockDeviceInfo Refresh() => _info;

    public void Dispose()
    {
    }
}
