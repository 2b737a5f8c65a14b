using Microsoft.Win32.SafeHandles;
using XenDisk.Cow.Leases;
using XenDisk.Cow.Policies;
using XenDisk.Storage;

namespace XenDisk.Cow.Bitmap;

// The remap fast path: the map is all in memory, so the overlay answers where a range lives without
// blocking, and the data plane moves the data. Reads: runs of overlay data, base data and zeros.
// Writes: only into grains already in the overlay (a fixed place in the data area, no map change);
// anything that would copy up, change the map or must be durable at once (Sync) takes the slow path.
public sealed partial class BitmapOverlay
{
    private SafeFileHandle[]? _files;
    private int _baseFileIndex = -1;
    private bool _remapResolved;
    private long _remapsGranted;

    /// <summary>Ranges the fast path took (the data plane moved their data itself).</summary>
    public long RemapsGranted => Interlocked.Read(ref _remapsGranted);

    public IReadOnlyList<SafeFileHandle> Files
    {
        get
        {
            ResolveRemap();
            return _files ?? [];
        }
    }

    /// <summary>A flush writes the map back: the slow path.</summary>
    public bool FlushIsFileSync => false;

    public int Remap(bool write, long offset, long length, ReadOnlySpan<IoBuffer> buffers, Span<FileExtent> extents, out RemapLease lease)
    {
        lease = RemapLease.None;
        ResolveRemap();
        if (_files is null || IsDisposed || length == 0
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

        lease = new RemapLease(RangeLeases.Encode(start, stripes));
        Interlocked.Increment(ref _remapsGranted);
        return count;
    }

    public void ReleaseLease(RemapLease lease)
    {
        if (!lease.IsNone)
        {
            (int start, int count) = RangeLeases.Decode(lease.Value);
            _leases.Unpin(start, count);
        }
    }

    /// <summary>Fills the extents for [position, end) from the map (read under the pins); 0 to decline.</summary>
    private int MapRuns(bool write, long position, long end, ReadOnlySpan<IoBuffer> buffers, Span<FileExtent> extents)
    {
        var cow = (IRemappableBlockDevice)_cow;
        Span<FileExtent> one = stackalloc FileExtent[1];
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

            if (source == Source.Zeros)
            {
                if (count == extents.Length)
                {
                    return 0;
                }

                extents[count++] = new FileExtent(FileExtentKind.Zero, 0, 0, runEnd - position);
                position = runEnd;
                continue;
            }

            if (source == Source.Overlay)
            {
                if (count == extents.Length || !RemapOne(cow, write, _dataOffset + position, runEnd - position, buffers, one, 0))
                {
                    return 0;
                }

                extents[count++] = one[0];
                position = runEnd;
                continue;
            }

            // The base, then zeros past its end (a virtual disk larger than its base).
            long baseEnd = Math.Min(runEnd, _baseSize);
            if (position < baseEnd)
            {
                if (count == extents.Length || !RemapOne((IRemappableBlockDevice)_base!, write: false, position, baseEnd - position, buffers, one, _baseFileIndex))
                {
                    return 0;
                }

                extents[count++] = one[0];
            }

            if (baseEnd < runEnd)
            {
                if (count == extents.Length)
                {
                    return 0;
                }

                extents[count++] = new FileExtent(FileExtentKind.Zero, 0, 0, runEnd - Math.Max(position, baseEnd));
            }

            position = runEnd;
        }

        return count;
    }

    /// <summary>One extent from a raw device below (lease-free); its file index shifted to ours.</summary>
    private static bool RemapOne(IRemappableBlockDevice device, bool write, long offset, long length, ReadOnlySpan<IoBuffer> buffers, Span<FileExtent> one, int fileBase)
    {
        int n = device.Remap(write, offset, length, buffers, one, out RemapLease lease);
        if (n != 1 || !lease.IsNone)
        {
            if (!lease.IsNone)
            {
                device.ReleaseLease(lease);
            }

            return false;
        }

        one[0] = one[0] with { FileIndex = one[0].FileIndex + fileBase };
        return true;
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
            if (_remapResolved)
            {
                return;
            }

            if (_cow is IRemappableBlockDevice cow && (_base is null || _base is IRemappableBlockDevice))
            {
                var files = new List<SafeFileHandle>(cow.Files);
                if (_base is IRemappableBlockDevice baseDevice)
                {
                    _baseFileIndex = files.Count;
                    files.AddRange(baseDevice.Files);
                }

                _files = [.. files];
            }

            Volatile.Write(ref _remapResolved, true);
        }
    }
}
