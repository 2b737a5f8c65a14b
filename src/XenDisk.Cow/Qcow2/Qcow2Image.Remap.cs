using Microsoft.Win32.SafeHandles;
using XenDisk.Cow.Leases;
using XenDisk.Cow.Storage;
using XenDisk.Cow.Policies;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

// The remap fast path (see IRemappableBlockDevice): answered from the L1 table and the L2 tables in
// the cache alone, under the metadata lock and never with I/O. Reads: runs of data in the image file,
// of the backing file and of zeros (== Cluster mapping ==, == Extended L2 Entries ==). Writes: only
// in place, into units that hold data in clusters with the COPIED flag (refcount 1), off every
// metadata cluster; anything else (an L2 table not cached, allocation, copy-up, compressed or shared
// clusters, the Sync policy, a failed image) is declined and takes the slow path.
public sealed partial class Qcow2Image
{
    private readonly RangeLeases _leases = new(StripeCount);
    private RemapTargets? _targets;
    private bool _remapResolved;
    private long _remapsGranted;

    /// <summary>Ranges the fast path took (the data plane moved their data itself).</summary>
    public long RemapsGranted => Interlocked.Read(ref _remapsGranted);

    public IReadOnlyList<SafeFileHandle> Files
    {
        get
        {
            ResolveRemap();
            return _targets?.Files ?? [];
        }
    }

    /// <summary>A flush writes metadata back: the slow path.</summary>
    public bool FlushIsFileSync => false;

    public int Remap(bool write, long offset, long length, ReadOnlySpan<IoBuffer> buffers, Span<FileExtent> extents, out RemapLease lease)
    {
        lease = RemapLease.None;
        ResolveRemap();
        if (_targets is null || length <= 0
            || (write && (ReadOnly || _policy == MetadataPolicy.Sync || _failure != null))
            || !IoRange.IsValid(offset, length, _virtualSize, 512))
        {
            return 0;
        }

        long first = offset >> _clusterBits;
        long last = (offset + length - 1) >> _clusterBits;
        if (last - first + 1 > StripeCount)
        {
            return 0;
        }

        int start = (int)((ulong)first % StripeCount);
        int stripes = (int)(last - first + 1);
        if (!_leases.TryPin(start, stripes))
        {
            return 0;
        }

        int count;
        lock (_metadataLock)
        {
            count = MapClusters(write, offset, offset + length, buffers, extents);
        }

        if (count == 0)
        {
            _leases.Unpin(start, stripes);
            return 0;
        }

        if (write)
        {
            // The data plane writes these extents itself: they are dirty from now on.
            MarkBitmapsDirty(offset, length);
        }
        Interlocked.Increment(ref _remapsGranted);
        lease = RangeLeases.Lease(start, stripes);
        return count;
    }

    public void ReleaseLease(RemapLease lease) => _leases.Release(lease);

    /// <summary>Takes a cluster stripe for a change of mapping or data: bars the fast path there and waits for its I/O in flight.</summary>
    private void EnterExclusive(ReaderWriterLockSlim stripe, long guestCluster)
    {
        stripe.EnterWriteLock();
        _leases.Bar((int)((ulong)guestCluster % StripeCount), 1);
    }

    private void ExitExclusive(ReaderWriterLockSlim stripe, long guestCluster)
    {
        _leases.Unbar((int)((ulong)guestCluster % StripeCount), 1);
        stripe.ExitWriteLock();
    }

    /// <summary>Fills the extents for [position, end) from cached tables; 0 to decline. Under the metadata lock.</summary>
    private int MapClusters(bool write, long position, long end, ReadOnlySpan<IoBuffer> buffers, Span<FileExtent> extents)
    {
        var overlay = (IRemappableBlockDevice)_overlay;
        int count = 0;
        while (position < end)
        {
            long guestCluster = position >> _clusterBits;
            if (!TryLookupCached(guestCluster, out L2Entry entry) || entry.Compressed)
            {
                return 0;
            }

            long clusterStart = guestCluster << _clusterBits;
            long clusterEnd = Math.Min(end, clusterStart + _clusterSize);
            long host = entry.HostOffset;
            bool hostUsable = host != 0 && (host & (_clusterSize - 1)) == 0 && host <= _overlay.Info.SizeBytes - _clusterSize
                && _metadata.FindConflict(host, _clusterSize, _clusterBits, MetadataKind.None, out _) < 0;
            if (write && !(entry.Copied && hostUsable))
            {
                return 0;
            }

            while (position < clusterEnd)
            {
                int within = (int)(position - clusterStart);
                int unit = within >> _unitBits;
                UnitState state = StateOf(entry, unit);
                long runEnd = Math.Min(clusterEnd, clusterStart + ((long)(unit + 1) << _unitBits));
                while (runEnd < clusterEnd && StateOf(entry, (int)((runEnd - clusterStart) >> _unitBits)) == state)
                {
                    runEnd = Math.Min(clusterEnd, clusterStart + ((((runEnd - clusterStart) >> _unitBits) + 1) << _unitBits));
                }

                if (write && state != UnitState.Data)
                {
                    return 0;
                }

                switch (state)
                {
                    case UnitState.Data when hostUsable:
                        if (!RemapTargets.TryAdd(overlay, write, host + (position - clusterStart), runEnd - position, 0, buffers, extents, ref count))
                        {
                            return 0;
                        }

                        break;
                    case UnitState.Zero:
                        if (!RemapTargets.TryAddZeros(runEnd - position, extents, ref count))
                        {
                            return 0;
                        }

                        break;
                    case UnitState.Unallocated:
                        long backingSize = _backing?.Info.SizeBytes ?? 0;
                        long inBacking = Math.Clamp(backingSize - position, 0, runEnd - position);
                        if (inBacking > 0 && (_backing is not IRemappableBlockDevice backing
                            || !RemapTargets.TryAdd(backing, write: false, position, inBacking, _targets!.BaseFileIndex, buffers, extents, ref count)))
                        {
                            return 0;
                        }

                        if (inBacking < runEnd - position && !RemapTargets.TryAddZeros(runEnd - position - inBacking, extents, ref count))
                        {
                            return 0;
                        }

                        break;
                    default:
                        return 0;
                }

                position = runEnd;
            }
        }

        return count;
    }

    /// <summary>The L2 entry of <paramref name="guestCluster"/> from memory alone: false when its table is not cached. Under the metadata lock.</summary>
    private bool TryLookupCached(long guestCluster, out L2Entry entry)
    {
        entry = default;
        long l1Index = guestCluster >> _l2.IndexBits;
        if (l1Index >= _l1.Size)
        {
            return false;
        }

        ulong l1Entry = ReadL1(l1Index);
        if ((l1Entry & Qcow2Format.L1ReservedMask) != 0)
        {
            return false;
        }

        long table = (long)(l1Entry & Qcow2Format.OffsetMask);
        if (table == 0)
        {
            // No L2 table: every cluster it would map is unallocated.
            return true;
        }

        if (!_l2.TryGetCached(table, out MetadataCache.Entry cached))
        {
            return false;
        }

        entry = _l2.Read(cached, _l2.IndexOf(guestCluster));
        return true;
    }

    private void ResolveRemap()
    {
        if (Volatile.Read(ref _remapResolved))
        {
            return;
        }

        lock (_metadataLock)
        {
            _targets ??= RemapTargets.For(_overlay, _backing);
            Volatile.Write(ref _remapResolved, true);
        }
    }
}
