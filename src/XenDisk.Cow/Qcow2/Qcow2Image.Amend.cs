using System.Buffers.Binary;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

// qemu-img amend's compat and lazy_refcounts options (== Header ==): what version 2 can express,
// and QEMU's rules (block/qcow2.c qcow2_amend_options, qcow2_downgrade, qcow2_upgrade) for when a
// change is refused. A downgrade turns zero clusters into something version 2 has (unallocated
// without a backing file, clusters of zeros with one) and is written when the image closes.
public sealed partial class Qcow2Image
{
    private bool _downgradeOnClose;

    /// <summary>Sets or clears compatible bit 0 (lazy refcounts). Needs version 3; written at close.</summary>
    public IoStatus SetLazyRefcounts(bool on)
    {
        if (ReadOnly)
        {
            return RefuseRequest(ReadOnlyReason ?? "the image is open read-only");
        }
        if (_openedHeader.Version < 3 || _downgradeOnClose)
        {
            return RefuseRequest("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)");
        }
        lock (_metadataLock)
        {
            _compatible = on ? _compatible | Qcow2Format.CompatibleLazyRefcounts : _compatible & ~Qcow2Format.CompatibleLazyRefcounts;
        }
        return IoStatus.Ok;
    }

    /// <summary>
    /// Prepares a downgrade to version 2 (compat=0.10), refused where QEMU refuses it and where
    /// version 2 cannot express what the image holds; the header is rewritten on close.
    /// </summary>
    public IoStatus DowngradeToVersion2()
    {
        if (ReadOnly)
        {
            return RefuseRequest(ReadOnlyReason ?? "the image is open read-only");
        }
        if (_openedHeader.Version < 3)
        {
            return IoStatus.Ok;
        }
        if (_refcounts.RefcountOrder != 4)
        {
            return RefuseRequest("compat=0.10 requires refcount_bits=16");
        }
        ulong incompatible = _incompatible & ~(Qcow2Format.IncompatibleDirty | Qcow2Format.IncompatibleCompressionType);
        if (incompatible != 0)
        {
            return RefuseRequest($"Cannot downgrade an image with incompatible features 0x{incompatible:x} set");
        }
        if (_openedHeader.Bitmaps != null)
        {
            // QEMU 7.2 downgrades and leaves the bitmaps' clusters leaked: version 2 has no autoclear
            // field to say they are consistent. Refused here rather than losing them silently.
            return RefuseRequest("version 2 cannot keep persistent bitmaps (it has no autoclear field); remove them first with 'image bitmap --remove'");
        }
        bool zstd = (_incompatible & Qcow2Format.IncompatibleCompressionType) != 0 && _openedHeader.CompressionType != Qcow2Format.CompressionZlib;
        IReadOnlyList<Qcow2Extent> map = Map();
        if (zstd && map.Any(e => e.Kind == Qcow2ExtentKind.Compressed))
        {
            return RefuseRequest("Cannot downgrade an image with zstd compression type and existing compressed clusters");
        }
        foreach (Qcow2Extent extent in map.Where(e => e.Kind == Qcow2ExtentKind.Zero))
        {
            // Version 2 has no zero flag (L2 entry bit 0).
            IoStatus status = _backing == null ? Discard(extent.Offset, extent.Length, secure: false) : WriteZeros(extent.Offset, extent.Length);
            if (status != IoStatus.Ok)
            {
                return status;
            }
        }
        _downgradeOnClose = true;
        return IoStatus.Ok;
    }

    private IoStatus WriteZeros(long offset, long length)
    {
        foreach (GuestClusterRange.Step step in new GuestClusterRange(offset, length, _clusterBits))
        {
            IoBuffer zeros = _zeros.AsIoBuffer(0, step.Length);
            IoStatus status = Write(offset + step.Done, new ReadOnlySpan<IoBuffer>(in zeros));
            if (status != IoStatus.Ok)
            {
                return status;
            }
        }
        return IoStatus.Ok;
    }

    /// <summary>After a clean close: the header as version 2 (fields up to byte 71, then the extensions version 2 readers know).</summary>
    private IoStatus WriteVersion2Header()
    {
        Span<byte> h = _header.Span;
        List<(uint Type, byte[] Data)> extensions = HeaderExtensions.Parse(h, out _)
            .Where(e => e.Type is not (Qcow2Format.ExtensionFeatureNameTable or Qcow2Format.ExtensionBitmaps)).ToList();
        int changed = HeaderExtensions.Rebuild(h, 2, extensions);
        if (changed < 0)
        {
            return RefuseRequest("the header extensions do not fit in the header cluster");
        }
        IoStatus status = DeviceIo.Write(_overlay, 0, _header, 0, Math.Min(_clusterSize, RoundUpToSector(changed)));
        return status == IoStatus.Ok ? _overlay.Flush() : status;
    }

    /// <summary>
    /// Upgrades a version 2 image to version 3 (compat=1.1) in its header alone: version 3 adds
    /// fields and features, and everything version 2 holds means the same in version 3. Internal
    /// snapshots are refused, since version 3 requires snapshot table extra data that version 2
    /// tables lack. <paramref name="device"/> is opened writable and locked by the caller.
    /// </summary>
    public static void UpgradeToVersion3(IBlockDevice device, bool lazyRefcounts)
    {
        Qcow2Header header = Qcow2HeaderReader.Read(device, out AlignedBlock cluster);
        using (cluster)
        {
            if (header.Version >= 3)
            {
                return;
            }
            if (header.SnapshotCount > 0)
            {
                throw new StorageException("qcow2: upgrading an image with internal snapshots is not supported (version 3 needs extra data in every snapshot table entry)");
            }
            List<(uint Type, byte[] Data)> extensions = HeaderExtensions.Parse(cluster.Span, out _);
            int changed = HeaderExtensions.Rebuild(cluster.Span, 3, extensions);
            if (changed < 0)
            {
                throw new StorageException("qcow2: the version 3 header does not fit in the header cluster");
            }
            BinaryPrimitives.WriteUInt64BigEndian(cluster.Span[Qcow2HeaderField.CompatibleFeatures..], lazyRefcounts ? Qcow2Format.CompatibleLazyRefcounts : 0);
            int sector = Math.Max(512, device.Info.LogicalSectorSize);
            int length = Math.Min(cluster.Length, (changed + sector - 1) / sector * sector);
            ThrowIfFailed(DeviceIo.Write(device, 0, cluster, 0, length), "writing the version 3 header");
            ThrowIfFailed(device.Flush(), "flushing the version 3 header");
        }
    }
}
