namespace XenDisk.Storage;

/// <summary>
/// The range checks every <see cref="IBlockDevice"/> makes before touching storage. Callers have
/// validated already; devices check again because a write outside the disk must be impossible.
/// All arithmetic is overflow-safe: nothing here adds two untrusted numbers before comparing.
/// </summary>
public static class IoRange
{
    /// <summary>
    /// Sums the buffer lengths. Returns false (the request is refused as <see cref="IoStatus.OutOfRange"/>)
    /// when a length is negative; a sum of int lengths cannot overflow a long for any span that fits in memory.
    /// </summary>
    public static bool TryGetTotalLength(ReadOnlySpan<IoBuffer> buffers, out long totalLength)
    {
        long total = 0;
        foreach (ref readonly IoBuffer buffer in buffers)
        {
            if (buffer.Length < 0)
            {
                totalLength = 0;
                return false;
            }
            total += buffer.Length;
        }
        totalLength = total;
        return true;
    }

    /// <summary>
    /// True when [offset, offset + length) lies within a device of <paramref name="deviceSize"/> bytes
    /// and both ends fall on <paramref name="sectorSize"/> boundaries.
    /// </summary>
    public static bool IsValid(long offset, long length, long deviceSize, int sectorSize)
    {
        if (offset < 0 || length < 0 || offset > deviceSize || length > deviceSize - offset)
        {
            return false;
        }
        // Sector sizes are powers of two; a mask keeps the check cheap on the hot path.
        long mask = sectorSize - 1;
        return ((offset | length) & mask) == 0;
    }

    /// <summary>Validates a scatter list at <paramref name="offset"/>: <see cref="IoStatus.Ok"/> or <see cref="IoStatus.OutOfRange"/>.</summary>
    public static IoStatus Check(long offset, ReadOnlySpan<IoBuffer> buffers, long deviceSize, int sectorSize, out long totalLength)
    {
        if (!TryGetTotalLength(buffers, out totalLength) || !IsValid(offset, totalLength, deviceSize, sectorSize))
        {
            return IoStatus.OutOfRange;
        }
        return IoStatus.Ok;
    }

    /// <summary>Validates a constructor's geometry: sector sizes are powers of two from 512 to 64 KiB and the size a whole number of sectors.</summary>
    internal static void ValidateGeometry(long sizeBytes, int logicalSectorSize, int physicalSectorSize)
    {
        if (!IsSectorSize(logicalSectorSize))
        {
            throw new ArgumentOutOfRangeException(nameof(logicalSectorSize), logicalSectorSize, "The logical sector size must be a power of two from 512 to 65536.");
        }
        if (!IsSectorSize(physicalSectorSize) || physicalSectorSize < logicalSectorSize)
        {
            throw new ArgumentOutOfRangeException(nameof(physicalSectorSize), physicalSectorSize, "The physical sector size must be a power of two from 512 to 65536 and at least the logical sector size.");
        }
        if (sizeBytes < 0 || sizeBytes % logicalSectorSize != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(sizeBytes), sizeBytes, "The size must be a non-negative multiple of the logical sector size.");
        }
    }

    internal static bool IsSectorSize(int size) => size is >= 512 and <= 65536 && int.IsPow2(size);
}
