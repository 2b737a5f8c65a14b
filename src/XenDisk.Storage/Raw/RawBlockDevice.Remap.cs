using Microsoft.Win32.SafeHandles;

namespace XenDisk.Storage;

// The remap fast path of a raw file or device: the identity. Every range lives at the same offset
// of the one file, so the data plane can read and write it through its own engine.
public sealed partial class RawBlockDevice : IRemappableBlockDevice
{
    private SafeFileHandle[]? _files;

    public IReadOnlyList<SafeFileHandle> Files => _files ??= [_handle];

    /// <summary>FLUSH is fdatasync of the one file (<see cref="Flush"/>).</summary>
    public bool FlushIsFileSync => true;

    /// <summary>
    /// One extent, the range itself, after the checks <see cref="Read"/> and <see cref="Write"/> make.
    /// Declines (slow path) what they would refuse, so the refusal is reported the same way, and
    /// buffers that O_DIRECT cannot take, so that they go through the bounce path.
    /// </summary>
    public int Remap(bool write, long offset, long length, ReadOnlySpan<IoBuffer> buffers, Span<FileExtent> extents, out RemapLease lease)
    {
        lease = RemapLease.None;
        BlockDeviceInfo info = Info;
        if (extents.IsEmpty
            || (write && info.ReadOnly)
            || !IoRange.IsValid(offset, length, info.SizeBytes, info.LogicalSectorSize)
            || (UsesDirectIo && !IsDirectIoCompatible(buffers)))
        {
            return 0;
        }

        extents[0] = new FileExtent(FileExtentKind.File, 0, offset, length);
        return 1;
    }

    public void ReleaseLease(RemapLease lease)
    {
    }
}
