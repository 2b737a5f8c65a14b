namespace XenDisk.Storage;

/// <summary>How <see cref="RawBlockDevice.Open"/> opens a file or block device.</summary>
public sealed record RawDeviceOptions
{
    /// <summary>The default bounce buffer: large enough for the largest blkif request (256 segments of 4 KiB, blkback's MAX_INDIRECT_SEGMENTS) in a few chunks.</summary>
    public const int DefaultBounceBufferSize = 256 * 1024;

    /// <summary>Bounce buffers a device makes for itself: misaligned buffers are rare, so a few suffice.</summary>
    public const int DefaultBounceBufferCount = 4;

    /// <summary>
    /// The logical sector size a regular file presents (512 unless a guest needs 4096). Block devices
    /// always present their own (BLKSSZGET); the host file system's block size is deliberately not used.
    /// </summary>
    public int FileLogicalSectorSize { get; init; } = 512;

    /// <summary>The physical sector size a regular file presents; 0 means the logical sector size.</summary>
    public int FilePhysicalSectorSize { get; init; }

    /// <summary>
    /// Open with O_DIRECT so guest I/O bypasses the host page cache (the guest has its own). When the
    /// file system refuses O_DIRECT the device falls back to buffered I/O and says so in its description.
    /// </summary>
    public bool DirectIo { get; init; } = true;

    /// <summary>
    /// Bounce buffers for buffers that O_DIRECT cannot take as they are (misaligned address or length).
    /// Shared, caller-owned and not disposed by the device; when null the device makes its own
    /// (<see cref="DefaultBounceBufferSize"/> x <see cref="DefaultBounceBufferCount"/>) on first need.
    /// Its buffer size must be a multiple of the device's logical sector size.
    /// </summary>
    public AlignedBufferPool? BouncePool { get; init; }

    /// <summary>
    /// How far beyond the size asked for <see cref="RawBlockDevice.EnsureSize"/> grows a regular file
    /// (0: exactly as asked). Growth allocates blocks with fallocate rather than leaving a hole: on
    /// ext4 and XFS a direct write into a hole must allocate, which takes the inode lock exclusively for
    /// the whole write, so concurrent writers into a growing image queue behind one another (fio,
    /// 32 psync writers of 4 KiB: about 6,000 IOPS into a sparse file, 40,000 into a fallocated one).
    /// Space grown beyond the largest size asked for is given back when the device is disposed.
    /// </summary>
    public long PreallocationStep { get; init; }
}
