using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>
/// Metadata overlap protection, as QEMU's qcow2_check_metadata_overlap with its default checks and
/// more: every write, of guest data or of metadata, and every cluster the allocator hands out is
/// checked against <see cref="MetadataClusters"/>, the map of where metadata lives. The map is built
/// at open from the tables themselves, not from the refcounts, which may be wrong. A would-be overlap
/// fails its request and marks the image corrupt: incompatible bit 1 in the header (== Header ==),
/// so that nothing writes to it again until it is repaired, as QEMU does.
/// </summary>
public sealed partial class Qcow2Image
{
    private readonly MetadataClusters _metadata = new();

    /// <summary>Set when a corruption was found on a writable image and the corrupt bit is not yet on disk.</summary>
    private volatile bool _corruptBitPending;

    /// <summary>
    /// Records every cluster the image's metadata occupies: header, L1 table, refcount table, the
    /// refcount blocks and L2 tables the tables point to, the snapshot table and snapshots' L1
    /// tables, and the bitmaps' directory, tables and data. Entries that are not cluster aligned
    /// are left out (they are reported as corruption when used); entries beyond the end of the file
    /// are kept, so the allocator never grows the file over a cluster some table already claims.
    /// </summary>
    private void BuildMetadataMap()
    {
        MetadataClusters map = new();
        void Register(long offset, long length, MetadataKind kind)
        {
            if (length > 0 && offset >= 0 && offset < Qcow2Format.MaximumHostOffset)
            {
                map.Add(offset >> _clusterBits, ClustersFor((offset & (_clusterSize - 1)) + length), kind);
            }
        }
        List<string> problems = [];
        PersistentBitmaps.Walk(_overlay, _openedHeader, Register, problems);
        lock (_metadataLock)
        {
            Register(0, _clusterSize, MetadataKind.Header);
            Register(_l1.Offset, (long)_l1.Size * 8, MetadataKind.L1Table);
            _refcounts.RegisterStructure(Register);
            for (long i = 0; i < _l1.Size; i++)
            {
                long table = (long)(ReadL1(i) & Qcow2Format.OffsetMask);
                if (table != 0 && (table & (_clusterSize - 1)) == 0)
                {
                    Register(table, _clusterSize, MetadataKind.L2Table);
                }
            }
            if (_openedHeader.SnapshotCount > 0)
            {
                Register(_openedHeader.SnapshotsOffset, _openedHeader.SnapshotTableLength, MetadataKind.SnapshotTable);
                foreach (Qcow2Snapshot snapshot in _openedHeader.Snapshots)
                {
                    Register(snapshot.L1TableOffset, (long)snapshot.L1Size * 8, MetadataKind.SnapshotL1Table);
                }
            }
            _metadata.ReplaceWith(map);
        }
    }

    /// <summary>
    /// Fails (and marks the image corrupt) unless every cluster of the range holds exactly
    /// <paramref name="expected"/>: <see cref="MetadataKind.None"/> for guest data, the structure's
    /// own kind for metadata. Under the metadata lock.
    /// </summary>
    private IoStatus CheckOverlap(long offset, long length, MetadataKind expected, string what)
    {
        long cluster = _metadata.FindConflict(offset, length, _clusterBits, expected, out MetadataKind found);
        if (cluster < 0)
        {
            return IoStatus.Ok;
        }
        MetadataKind other = found & ~expected;
        string victim = other != MetadataKind.None
            ? MetadataClusters.Describe(other)
            : $"a cluster that holds no {MetadataClusters.Describe(expected)}";
        return Corrupt($"preventing a write of {what} at 0x{offset:x}: host cluster 0x{cluster << _clusterBits:x} holds {victim}");
    }

    /// <summary>
    /// A metadata inconsistency found while serving I/O: the request fails, further writes are
    /// refused, the problem is logged once, and a writable image gets its corrupt bit (written by
    /// <see cref="PersistCorruptBit"/> outside the metadata lock). Only for real inconsistencies:
    /// requests that are merely unsupported fail alone (<see cref="RefuseRequest"/>).
    /// </summary>
    private IoStatus Corrupt(string problem)
    {
        string failure = $"image corruption: {problem}";
        _lastError = failure;
        if (Interlocked.CompareExchange(ref _failure, failure, null) == null)
        {
            if (!ReadOnly)
            {
                _corruptBitPending = true;
            }
            if (_options.Logger is { } logger)
            {
                Qcow2Log.Corrupted(logger, ImageName, problem, ReadOnly ? "" : " (corrupt bit set: repair it with a checker before writing)");
            }
        }
        return IoStatus.IoError;
    }

    /// <summary>A request the engine does not support or refuses: it fails alone, the image stays usable.</summary>
    private IoStatus RefuseRequest(string reason)
    {
        _lastError = reason;
        return IoStatus.IoError;
    }

    /// <summary>
    /// Writes the corrupt bit found by <see cref="Corrupt"/>: only the header's incompatible_features
    /// field changes, nothing else in memory reaches the disk (memory may be what is wrong). The
    /// caller holds the write-back lock (no pass writes the header meanwhile) and not the metadata lock.
    /// </summary>
    private void PersistCorruptBit()
    {
        if (!_corruptBitPending)
        {
            return;
        }
        _corruptBitPending = false;
        lock (_metadataLock)
        {
            _incompatible |= Qcow2Format.IncompatibleCorrupt;
            BinaryPrimitives.WriteUInt64BigEndian(_header.Span[Qcow2HeaderField.IncompatibleFeatures..], _incompatible);
        }
        IoStatus status = DeviceIo.Write(_overlay, 0, _header, 0, HeaderWriteLength);
        _statistics.CountMetadataWrites(1);
        if (status == IoStatus.Ok)
        {
            status = _overlay.Flush();
            _statistics.CountMetadataFlush();
        }
        if (status != IoStatus.Ok && _options.Logger is { } logger)
        {
            Qcow2Log.CorruptBitFailed(logger, ImageName, status);
        }
    }

    /// <summary><see cref="PersistCorruptBit"/> from a request path that holds no lock.</summary>
    private void PersistCorruptBitIfPending()
    {
        if (_corruptBitPending)
        {
            lock (_writeBackLock)
            {
                PersistCorruptBit();
            }
        }
    }
}
