using System.Buffers.Binary;
using System.Text;
using XenDisk.Cow.Storage;
using XenDisk.Storage;
using XenDisk.Cow.Overlays;

namespace XenDisk.Cow.Qcow2;

// The backing link: backing_file_offset/backing_file_size in the header, the name they point at, and
// the backing file format header extension (== Header ==, === Header extensions ===).
public sealed partial class Qcow2Image
{
    /// <summary>
    /// Points the overlay at a different backing file (<paramref name="newBackingFile"/>, of format
    /// <paramref name="newBackingFormat"/>), or at none when the name is null or empty.
    /// <para>
    /// Safe mode (the default, like qemu-img rebase without -u): first every unallocated unit whose
    /// contents differ between the current chain and <paramref name="newBacking"/> (the new backing
    /// image, opened read-only by the caller; ignored without a new name) is copied into the overlay,
    /// so the virtual disk reads the same afterwards. The image must have been opened with its
    /// current backing chain. Rebasing onto no backing file is hydration.
    /// </para>
    /// <para>
    /// Unsafe mode (<see cref="Qcow2RebaseOptions.Unsafe"/>, qemu-img rebase -u) rewrites only the
    /// header. While this instance stays open it keeps reading through the device it was opened
    /// with; the new link takes effect at the next open.
    /// </para>
    /// Throws <see cref="ArgumentException"/> for an invalid name or format.
    /// </summary>
    public OverlayOperationResult Rebase(IBlockDevice? newBacking, string? newBackingFile, string? newBackingFormat, Qcow2RebaseOptions? options = null, CancellationToken cancellationToken = default)
    {
        options ??= new Qcow2RebaseOptions();
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        if (string.IsNullOrEmpty(newBackingFile))
        {
            newBackingFile = null;
            newBackingFormat = null;
            newBacking = null;
        }
        else
        {
            ValidateBackingLink(newBackingFile, newBackingFormat);
            if (!options.Unsafe && newBacking == null)
            {
                throw new ArgumentException("A safe rebase compares the old and new backing images: open the new backing image and pass it.", nameof(newBacking));
            }
        }
        if (ReadOnly)
        {
            return Failed(IoStatus.ReadOnly, "the image is open read-only" + (ReadOnlyReason != null ? $" ({ReadOnlyReason})" : ""));
        }
        lock (_maintenanceLock)
        {
            OverlayOperationResult copy = new() { Status = IoStatus.Ok };
            if (!options.Unsafe)
            {
                if (BackingFile != null && _backing == null)
                {
                    return Failed(IoStatus.NotSupported, $"the current backing file '{BackingFile}' is not open, so a safe rebase cannot compare contents (use unsafe mode if the contents are known to be equal)");
                }
                if (newBacking != null && newBacking.Info.LogicalSectorSize > _clusterSize)
                {
                    return Failed(IoStatus.NotSupported, $"the new backing image has {newBacking.Info.LogicalSectorSize}-byte sectors, larger than the {_clusterSize}-byte clusters");
                }
                copy = CopyDifferences(newBacking, options.BytesPerSecond, long.MaxValue, options.Progress, cancellationToken);
                if (!copy.Succeeded)
                {
                    return copy;
                }
            }
            IoStatus status = WriteBackingLink(newBackingFile, newBackingFormat);
            return status == IoStatus.Ok ? copy : copy with { Status = status, Error = Explain(status, "rewriting the backing file link") };
        }
    }

    /// <summary>Checks a backing file name and format before they are written into a header.</summary>
    internal static void ValidateBackingLink(string file, string? format)
    {
        if (format is not ("raw" or "qcow2"))
        {
            throw new ArgumentException($"The backing format must be \"raw\" or \"qcow2\" (got \"{format}\"): XenDisk never probes a backing file's format.", nameof(format));
        }
        if (file.Contains('\0', StringComparison.Ordinal))
        {
            throw new ArgumentException("The backing file name contains a NUL character.", nameof(file));
        }
        if (Encoding.UTF8.GetByteCount(file) > Qcow2Format.MaximumBackingFileNameLength)
        {
            throw new ArgumentException($"The backing file name is longer than {Qcow2Format.MaximumBackingFileNameLength} bytes.", nameof(file));
        }
    }

    /// <summary>
    /// Rewrites the backing link in the header. Everything the overlay holds is written back and
    /// flushed first, because from the moment the new header is durable the old backing file no
    /// longer stands behind the unallocated ranges. The header area is written in one write, as QEMU
    /// updates it; with the usual layout every changed byte lies in the first 4 KiB.
    /// </summary>
    private IoStatus WriteBackingLink(string? file, string? format)
    {
        lock (_writeBackLock)
        {
            IoStatus status = WriteBackCore(forGuestFlush: true, forceRefcounts: true);
            if (status != IoStatus.Ok)
            {
                return status;
            }
            AlignedBlock staged;
            int writeLength;
            lock (_metadataLock)
            {
                using AlignedBlock area = new(_clusterSize);
                string? problem = LayoutHeaderArea(_header.Span, file, format, area.Span, out int changedEnd);
                if (problem != null)
                {
                    _lastError = problem;
                    return IoStatus.NotSupported;
                }
                area.Span.CopyTo(_header.Span);
                UpdateHeaderFields();
                writeLength = Math.Min(_clusterSize, Math.Max(HeaderWriteLength, RoundUpToSector(changedEnd)));
                staged = CopyOf(_header, 0, writeLength);
            }
            using (staged)
            {
                status = DeviceIo.Write(_overlay, 0, staged, 0, writeLength);
                _statistics.CountMetadataWrites(1);
            }
            if (status == IoStatus.Ok && _policy != Policies.MetadataPolicy.Transient)
            {
                status = _overlay.Flush();
                _statistics.CountMetadataFlush();
            }
            if (status != IoStatus.Ok)
            {
                return Fail(status, "rewriting the backing file link in the header");
            }
            _backingLink = new BackingLink(file, format);
            return IoStatus.Ok;
        }
    }

    /// <summary>
    /// Lays out the first cluster anew: the header fields as they are, the backing format extension
    /// (when there is a backing file) first, every other extension unchanged and in order, the end
    /// marker, then the backing file name. Returns a problem, or null, and in
    /// <paramref name="changedEnd"/> the end of the bytes that differ from <paramref name="current"/>'s layout.
    /// </summary>
    private static string? LayoutHeaderArea(ReadOnlySpan<byte> current, string? file, string? format, Span<byte> result, out int changedEnd)
    {
        int clusterSize = result.Length;
        int version = (int)BinaryPrimitives.ReadUInt32BigEndian(current[Qcow2HeaderField.Version..]);
        int headerLength = version >= 3 ? (int)BinaryPrimitives.ReadUInt32BigEndian(current[Qcow2HeaderField.HeaderLength..]) : Qcow2Format.HeaderLengthV2;
        long oldNameOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(current[Qcow2HeaderField.BackingFileOffset..]);
        int oldNameLength = oldNameOffset != 0 ? (int)BinaryPrimitives.ReadUInt32BigEndian(current[Qcow2HeaderField.BackingFileSize..]) : 0;
        int limit = oldNameOffset != 0 ? (int)oldNameOffset : clusterSize;

        result.Clear();
        current[..headerLength].CopyTo(result);
        int position = headerLength;
        if (format != null)
        {
            byte[] formatBytes = Encoding.UTF8.GetBytes(format);
            BinaryPrimitives.WriteUInt32BigEndian(result[position..], Qcow2Format.ExtensionBackingFormat);
            BinaryPrimitives.WriteUInt32BigEndian(result[(position + 4)..], (uint)formatBytes.Length);
            formatBytes.CopyTo(result[(position + 8)..]);
            position += 8 + ((formatBytes.Length + 7) & ~7);
        }

        // The area was validated when the image was opened (the reader's rules are followed here).
        int oldPosition = headerLength;
        int oldEnd = headerLength;
        while (limit - oldPosition >= 8)
        {
            uint type = BinaryPrimitives.ReadUInt32BigEndian(current[oldPosition..]);
            int length = (int)BinaryPrimitives.ReadUInt32BigEndian(current[(oldPosition + 4)..]);
            if (type == Qcow2Format.ExtensionEnd)
            {
                oldEnd = oldPosition + 8;
                break;
            }
            int padded = 8 + ((length + 7) & ~7);
            int available = Math.Min(padded, limit - oldPosition);
            if (type != Qcow2Format.ExtensionBackingFormat)
            {
                if (position + available > clusterSize)
                {
                    changedEnd = 0;
                    return "the header extensions do not fit in the first cluster";
                }
                current.Slice(oldPosition, available).CopyTo(result[position..]);
                position += padded;
            }
            oldPosition += padded;
            oldEnd = Math.Min(oldPosition, limit);
        }

        position += 8; // end marker: eight zero bytes
        byte[] name = file != null ? Encoding.UTF8.GetBytes(file) : [];
        if (position + name.Length > clusterSize)
        {
            changedEnd = 0;
            return $"the backing file name ({name.Length} bytes) does not fit in the first cluster after the header extensions; use a shorter name";
        }
        if (file != null)
        {
            name.CopyTo(result[position..]);
            BinaryPrimitives.WriteUInt64BigEndian(result[Qcow2HeaderField.BackingFileOffset..], (ulong)position);
            BinaryPrimitives.WriteUInt32BigEndian(result[Qcow2HeaderField.BackingFileSize..], (uint)name.Length);
        }
        else
        {
            BinaryPrimitives.WriteUInt64BigEndian(result[Qcow2HeaderField.BackingFileOffset..], 0);
            BinaryPrimitives.WriteUInt32BigEndian(result[Qcow2HeaderField.BackingFileSize..], 0);
        }
        // Bytes after the used area keep nothing of the old name.
        int oldUsed = Math.Max(oldEnd, oldNameOffset != 0 ? (int)oldNameOffset + oldNameLength : 0);
        changedEnd = Math.Max(oldUsed, position + name.Length);
        return null;
    }
}
