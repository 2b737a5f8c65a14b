using Microsoft.Win32.SafeHandles;
using XenDisk.Cow.Leases;
using XenDisk.Cow.Storage;
using XenDisk.Cow.Policies;
using XenDisk.Storage;

namespace XenDisk.Cow.Bitmap;

// The remap fast path: the map is all in memory, so the overlay answers where a range lives without
// blocking, and the data plane moves the data. Reads: runs of overlay data, base data and zeros.
// Writes: only into grains already in the overlay (a fixed place in the data area, no map change);
// anything that would copy up, change the map or must be durable at once (Sync) takes the slow path.
public sealed partial class BitmapOverlay
{
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

    /// <summary>A flush writes the map back: the slow path.</summary>
    public bool FlushIsFileSync => false;

    public int Remap(bool write, long offset, long length, ReadOnlySpan<IoBuffer> buffers, Span<FileExtent> extents, out RemapLease lease)
    {
        lease = RemapLease.None;
        ResolveRemap();
        if (_targets is null || IsDisposed || length == 0
            || (write && (_readOnly || _policy == MetadataPolicy.Sync))
            || !IoRange.IsValid(offset, length, _virtualSize, Info.LogicalSectorSize))
        {
            return 0;
        }

        long first = offset >> _grainShift;
        long last = (offset + length - 1) >> _grainShift;
        if (last - first + 1 > MaxGrainsPerStep)
        {
            return 0;
        }

        int start = (int)(first & (StripeCount - 1));
        int stripes = (int)(last - first + 1);
        if (!_leases.TryPin(start, stripes))
        {
            return 0;
        }

        int count = MapRuns(write, offset, offset + length, buffers, extents);
        if (count == 0)
        {
            _leases.Unpin(start, stripes);
            return 0;
        }

        lease = RangeLeases.Lease(start, stripes);
        Interlocked.Increment(ref _remapsGranted);
        return count;
    }

    public void ReleaseLease(RemapLease lease) => _leases.Release(lease);

    /// <summary>Fills the extents for [position, end) from the map (read under the pins); 0 to decline.</summary>
    private int MapRuns(bool write, long position, long end, ReadOnlySpan<IoBuffer> buffers, Span<FileExtent> extents)
    {
        var cow = (IRemappableBlockDevice)_cow;
        int count = 0;
        while (position < end)
        {
            long grain = position >> _grainShift;
            Source source = SourceOf(_map.Get(grain));
            long runEnd = Math.Min(GrainEnd(grain), end);
            while (runEnd < end && SourceOf(_map.Get(runEnd >> _grainShift)) == source)
            {
                runEnd = Math.Min(GrainEnd(runEnd >> _grainShift), end);
            }

            if (write && source != Source.Overlay)
            {
                return 0;
            }

            bool mapped = source switch
            {
                Source.Zeros => RemapTargets.TryAddZeros(runEnd - position, extents, ref count),
                Source.Overlay => RemapTargets.TryAdd(cow, write, _dataOffset + position, runEnd - position, 0, buffers, extents, ref count),
                _ => MapBaseRun(position, runEnd, buffers, extents, ref count),
            };
            if (!mapped)
            {
                return 0;
            }

            position = runEnd;
        }

        return count;
    }

    /// <summary>A run read from the base: its data, then zeros past its end (a virtual disk larger than its base).</summary>
    private bool MapBaseRun(long position, long runEnd, ReadOnlySpan<IoBuffer> buffers, Span<FileExtent> extents, ref int count)
    {
        long baseEnd = Math.Min(runEnd, _baseSize);
        if (position < baseEnd
            && !RemapTargets.TryAdd((IRemappableBlockDevice)_base!, write: false, position, baseEnd - position, _targets!.BaseFileIndex, buffers, extents, ref count))
        {
            return false;
        }

        return baseEnd >= runEnd || RemapTargets.TryAddZeros(runEnd - Math.Max(position, baseEnd), extents, ref count);
    }

    /// <summary>The fast path exists when the data area and the base (if any) are files the data plane can reach.</summary>
    private void ResolveRemap()
    {
        if (Volatile.Read(ref _remapResolved))
        {
            return;
        }

        lock (_writeBackLock)
        {
            _targets ??= RemapTargets.For(_cow, _base);
            Volatile.Write(ref _remapResolved, true);
        }
    }
}
