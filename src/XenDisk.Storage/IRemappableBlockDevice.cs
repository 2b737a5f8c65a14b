using Microsoft.Win32.SafeHandles;

namespace XenDisk.Storage;

/// <summary>
/// The remap fast path (the dm-userspace split): the device decides, from memory alone, where a
/// range lives; the data plane moves the data itself, through its own asynchronous engine (one
/// io_uring per ring thread), straight between the guest's pages and the files named here.
/// Anything the device cannot answer without blocking (a table not in memory, an allocation, a
/// copy-up, a failed image) is declined, and the request takes the slow path: the blocking
/// <see cref="IBlockDevice"/> call, run off the ring thread.
/// <para>
/// Ownership: <see cref="Files"/> stay open until the device is disposed, which the control plane does
/// only after every ring using it has stopped. A granted <see cref="RemapLease"/> must be released with
/// <see cref="ReleaseLease"/> exactly once, from any thread, after the I/O it covers has completed;
/// until then the device keeps copy-up, hydration, commit and discard off those units.
/// </para>
/// </summary>
public interface IRemappableBlockDevice : IBlockDevice
{
    /// <summary>
    /// The files extents refer to by index. Registered with each ring's engine when the ring starts;
    /// the set never changes while the device is open.
    /// </summary>
    IReadOnlyList<SafeFileHandle> Files { get; }

    /// <summary>
    /// True when FLUSH is exactly an fdatasync of every file in <see cref="Files"/> (a raw file or
    /// device); false when a flush has more to do (an overlay's metadata write-back), so it takes the slow path.
    /// </summary>
    bool FlushIsFileSync { get; }

    /// <summary>
    /// Answers where [<paramref name="offset"/>, offset + <paramref name="length"/>) lives, for a read
    /// (<paramref name="write"/> false) or for a write that can go straight to space already allocated.
    /// Fills <paramref name="extents"/> in order, covering the range exactly, and returns how many
    /// (at least 1); returns 0 to decline (slow path), and also when the extents would not fit.
    /// The buffers are passed so that a device can decline memory its files cannot take (O_DIRECT
    /// alignment). Never blocks and never allocates.
    /// </summary>
    int Remap(bool write, long offset, long length, ReadOnlySpan<IoBuffer> buffers, Span<FileExtent> extents, out RemapLease lease);

    /// <summary>Ends what <see cref="Remap"/> granted; any thread. A lease of <see cref="RemapLease.None"/> needs no call.</summary>
    void ReleaseLease(RemapLease lease);
}

/// <summary>Where a piece of a remapped range lives.</summary>
public enum FileExtentKind : byte
{
    /// <summary>Bytes at <see cref="FileExtent.FileOffset"/> of file <see cref="FileExtent.FileIndex"/>.</summary>
    File,
    /// <summary>Reads as zeros (unallocated, nothing beneath); not valid for writes.</summary>
    Zero,
}

/// <param name="Kind">File or zeros.</param>
/// <param name="FileIndex">Index into <see cref="IRemappableBlockDevice.Files"/>.</param>
/// <param name="FileOffset">Byte offset in that file; sector aligned.</param>
/// <param name="Length">Bytes; a multiple of the logical sector size.</param>
public readonly record struct FileExtent(FileExtentKind Kind, int FileIndex, long FileOffset, long Length);

/// <summary>An opaque token for a granted remap; <see cref="None"/> when the device needs no release.</summary>
public readonly record struct RemapLease(long Value)
{
    public static RemapLease None => default;

    public bool IsNone => Value == 0;
}
