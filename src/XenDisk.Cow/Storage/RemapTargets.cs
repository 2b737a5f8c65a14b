using Microsoft.Win32.SafeHandles;
using XenDisk.Storage;

namespace XenDisk.Cow.Storage;

/// <summary>
/// What an overlay's remap fast path answers with: the files of the overlay's own storage and of its
/// base (when both are raw files or devices the data plane can reach), and extents built from what
/// those devices answer, shifted to the overlay's file numbering and merged when contiguous.
/// Immutable once built; the overlay owns the devices.
/// </summary>
internal sealed class RemapTargets
{
    private RemapTargets(SafeFileHandle[] files, int baseFileIndex)
    {
        Files = files;
        BaseFileIndex = baseFileIndex;
    }

    public IReadOnlyList<SafeFileHandle> Files { get; }

    /// <summary>Where the base's files start in <see cref="Files"/>; -1 without a base.</summary>
    public int BaseFileIndex { get; }

    /// <summary>The targets of an overlay on <paramref name="storage"/> over <paramref name="baseDevice"/>, or null when either is out of the fast path's reach.</summary>
    public static RemapTargets? For(IBlockDevice storage, IBlockDevice? baseDevice)
    {
        if (storage is not IRemappableBlockDevice own || (baseDevice is not null && baseDevice is not IRemappableBlockDevice))
        {
            return null;
        }

        var files = new List<SafeFileHandle>(own.Files);
        int baseIndex = -1;
        if (baseDevice is IRemappableBlockDevice remappableBase)
        {
            baseIndex = files.Count;
            files.AddRange(remappableBase.Files);
        }

        return new RemapTargets([.. files], baseIndex);
    }

    /// <summary>
    /// Appends where <paramref name="device"/> (the overlay's storage, <paramref name="fileBase"/> 0, or
    /// its base, <see cref="BaseFileIndex"/>) keeps [offset, offset + length). False when the device
    /// declines, would need a lease of its own (a nested overlay), or the extents are full.
    /// </summary>
    public static bool TryAdd(IRemappableBlockDevice device, bool write, long offset, long length, int fileBase, ReadOnlySpan<IoBuffer> buffers,
        Span<FileExtent> extents, ref int count)
    {
        Span<FileExtent> one = stackalloc FileExtent[1];
        if (device.Remap(write, offset, length, buffers, one, out RemapLease lease) != 1 || !lease.IsNone)
        {
            device.ReleaseLease(lease);
            return false;
        }

        FileExtent extent = one[0] with { FileIndex = one[0].FileIndex + fileBase };
        if (count > 0 && extents[count - 1] is { Kind: FileExtentKind.File } previous
            && previous.FileIndex == extent.FileIndex && previous.FileOffset + previous.Length == extent.FileOffset)
        {
            extents[count - 1] = previous with { Length = previous.Length + extent.Length };
            return true;
        }

        return Append(extent, extents, ref count);
    }

    /// <summary>Appends <paramref name="length"/> bytes that read as zeros.</summary>
    public static bool TryAddZeros(long length, Span<FileExtent> extents, ref int count)
    {
        if (count > 0 && extents[count - 1].Kind == FileExtentKind.Zero)
        {
            extents[count - 1] = extents[count - 1] with { Length = extents[count - 1].Length + length };
            return true;
        }

        return Append(new FileExtent(FileExtentKind.Zero, 0, 0, length), extents, ref count);
    }

    private static bool Append(FileExtent extent, Span<FileExtent> extents, ref int count)
    {
        if (count == extents.Length)
        {
            return false;
        }

        extents[count++] = extent;
        return true;
    }
}
