namespace XenDisk.Storage;

/// <summary>
/// A disk as the data plane sees it (the "vbd"): byte-addressed, synchronous, thread-safe positional
/// I/O. Offsets and lengths are multiples of <see cref="BlockDeviceInfo.LogicalSectorSize"/>; callers
/// validate ranges before calling, and implementations check again (returning
/// <see cref="IoStatus.OutOfRange"/>) because a write outside the disk must be impossible.
/// Results, not exceptions: every I/O member returns an <see cref="IoStatus"/>.
/// Ownership: buffers are borrowed for the duration of the call only.
/// </summary>
public interface IBlockDevice : IDisposable
{
    /// <summary>Size and capabilities; replaced (not mutated) by <see cref="Refresh"/>.</summary>
    BlockDeviceInfo Info { get; }

    /// <summary>
    /// True when every operation completes without blocking on a device (memory, null): the data
    /// plane may then run it inline on the ring thread instead of handing it to an I/O thread.
    /// </summary>
    bool CompletesInline { get; }

    /// <summary>Reads <c>sum(buffers.Length)</c> bytes at <paramref name="offset"/> into the buffers, in order.</summary>
    IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers);

    /// <summary>Writes the buffers, in order, at <paramref name="offset"/>. Not durable until <see cref="Flush"/>.</summary>
    IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers);

    /// <summary>Makes every write that completed before this call durable (fdatasync).</summary>
    IoStatus Flush();

    /// <summary>
    /// Deallocates the range (BLKIF_OP_DISCARD). What the range reads back afterwards depends on the
    /// device, and <see cref="BlockDeviceInfo.DiscardZeroes"/> says which: files (hole punching) and
    /// memory read back zeros; raw block devices read back whatever the device returns, because
    /// BLKDISCARD makes no promise about the contents. With <paramref name="secure"/> the old contents
    /// must be unrecoverable (BLKSECDISCARD); devices that cannot promise that return
    /// <see cref="IoStatus.NotSupported"/>, as do devices without discard at all.
    /// </summary>
    IoStatus Discard(long offset, long length, bool secure);

    /// <summary>Re-reads the size from the underlying storage (online resize) and returns the new info.</summary>
    BlockDeviceInfo Refresh();
}

/// <summary>A piece of memory the caller owns (mapped grant pages, a pooled aligned buffer).</summary>
public readonly record struct IoBuffer(nint Address, int Length)
{
    public unsafe Span<byte> AsSpan() => new((void*)Address, Length);
}

/// <summary>The outcome of one storage operation. Everything but Ok becomes BLKIF_RSP_ERROR for the guest.</summary>
public enum IoStatus
{
    Ok = 0,
    /// <summary>EIO and anything unexpected from the storage.</summary>
    IoError,
    /// <summary>ENOSPC/EDQUOT: the storage (or an overlay's backing file system) is full.</summary>
    NoSpace,
    /// <summary>A write or discard on a read-only device.</summary>
    ReadOnly,
    /// <summary>
    /// The range does not lie within the device, is not a whole number of logical sectors, or
    /// contains a buffer with a negative length.
    /// </summary>
    OutOfRange,
    /// <summary>The device cannot do this operation (for example secure discard).</summary>
    NotSupported,
}

/// <summary>Size and capabilities of a block device.</summary>
public sealed record BlockDeviceInfo
{
    public required long SizeBytes { get; init; }

    /// <summary>The smallest addressable unit: 512 or 4096.</summary>
    public int LogicalSectorSize { get; init; } = 512;

    public int PhysicalSectorSize { get; init; } = 512;

    public bool ReadOnly { get; init; }

    public bool SupportsDiscard { get; init; }

    public bool SupportsSecureDiscard { get; init; }

    /// <summary>
    /// Whether a discarded range is guaranteed to read back as zeros: true for files (hole punching)
    /// and memory, false for raw block devices (BLKDISCARD promises nothing about the contents).
    /// </summary>
    public bool DiscardZeroes { get; init; }

    /// <summary>Bytes; discard-granularity in xenstore.</summary>
    public int DiscardGranularity { get; init; } = 512;

    /// <summary>Bytes; discard-alignment in xenstore.</summary>
    public int DiscardAlignment { get; init; }

    /// <summary>Whether writes may sit in a volatile cache until flushed (feature-flush-cache is offered either way).</summary>
    public bool HasVolatileCache { get; init; } = true;

    /// <summary>What the device is, for logs and status ("raw file /var/lib/x.img", "qcow2 overlay ...").</summary>
    public string Description { get; init; } = "";
}

/// <summary>errno to <see cref="IoStatus"/>, for engines that see a raw errno (an io_uring completion's res).</summary>
public static class IoStatuses
{
    /// <summary>ENOSPC/EDQUOT: NoSpace; EROFS: ReadOnly; EOPNOTSUPP: NotSupported; anything else: IoError.</summary>
    /// <remarks>The one errno-to-result mapping; the data plane calls it for each failed request, so it allocates nothing.</remarks>
    public static IoStatus FromErrno(int errno) =>
        errno == Tmds.Linux.LibC.ENOSPC || errno == Tmds.Linux.LibC.EDQUOT ? IoStatus.NoSpace
        : errno == Tmds.Linux.LibC.EROFS ? IoStatus.ReadOnly
        : errno == Tmds.Linux.LibC.EOPNOTSUPP ? IoStatus.NotSupported
        : IoStatus.IoError;
}
