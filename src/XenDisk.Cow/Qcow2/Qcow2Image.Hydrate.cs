using System.Diagnostics;
using XenDisk.Cow.Storage;
using XenDisk.Storage;
using XenDisk.Cow.Overlays;

namespace XenDisk.Cow.Qcow2;

// Hydration and safe rebase: copying what the overlay reads through to its backing chain into the
// overlay itself. Both run on a live image, beside guest I/O, through the guest write path.
public sealed partial class Qcow2Image
{
    /// <summary>The longest a throttled run sleeps at once, so cancellation is noticed promptly.</summary>
    private const int MaximumThrottleSleepMilliseconds = 250;

    /// <summary>Progress is reported about once per this many guest bytes: often enough for a progress bar, rarely enough to cost nothing.</summary>
    private const long ProgressIntervalBytes = 1L << 20;

    /// <summary>Serialises hydrate, rebase and commit on one image; guest I/O is not affected by it.</summary>
    private readonly object _maintenanceLock = new();

    /// <summary>The backing link as this instance last wrote it to the header; null while it is the one the image was opened with.</summary>
    private BackingLink? _backingLink;

    private sealed record BackingLink(string? File, string? Format);

    /// <summary>The backing file name the header names now (null for a standalone image).</summary>
    public string? BackingFile => _backingLink is { } link ? link.File : _openedHeader.BackingFile;

    /// <summary>The backing format the header names now ("raw", "qcow2"), or null.</summary>
    public string? BackingFormat => _backingLink is { } link ? link.Format : _openedHeader.BackingFormat;

    /// <summary>
    /// Copies every range that still reads through to the backing chain into the overlay, then
    /// (with <see cref="Qcow2HydrateOptions.DropBackingLink"/>) removes the backing file name and the
    /// backing format extension from the header, so the image is a standalone disk.
    /// <para>
    /// Online: safe on an image that is serving guest I/O. Each cluster is examined and copied with
    /// its stripe lock held exclusively, through the guest write path, and only units (clusters or
    /// subclusters) still unallocated under that lock are written: a guest write that lands first is
    /// never overwritten with older backing data, and a guest write that comes later finds the
    /// cluster allocated. Ranges whose backing data is all zeros stay unallocated: without a backing
    /// file they read as zeros too (== Cluster mapping ==), so nothing is stored for them.
    /// </para>
    /// <para>
    /// Resumable: metadata is written back every <see cref="Qcow2HydrateOptions.CheckpointBytes"/>
    /// in the engine's crash-safe order; a crash loses at most the work since then (as leaked
    /// clusters) and a re-run skips everything already allocated. Cancellation writes the metadata
    /// back and then throws <see cref="OperationCanceledException"/>. An image whose header names no
    /// backing file is already hydrated: the call returns at once.
    /// </para>
    /// </summary>
    public OverlayOperationResult Hydrate(Qcow2HydrateOptions? options = null, CancellationToken cancellationToken = default)
    {
        options ??= new Qcow2HydrateOptions();
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        if (ReadOnly)
        {
            return Failed(IoStatus.ReadOnly, "the image is open read-only" + (ReadOnlyReason != null ? $" ({ReadOnlyReason})" : ""));
        }
        lock (_maintenanceLock)
        {
            if (BackingFile == null)
            {
                return new OverlayOperationResult { Status = IoStatus.Ok, BytesExamined = _virtualSize };
            }
            _statistics.ReportHydration(0, _virtualSize);
            if (_backing == null)
            {
                return Failed(IoStatus.NotSupported, $"the backing file '{BackingFile}' is not open, so there is nothing to copy from");
            }
            OverlayOperationResult copy = CopyDifferences(newBacking: null, options.BytesPerSecond, options.CheckpointBytes, options.Progress, cancellationToken);
            if (!copy.Succeeded || !options.DropBackingLink)
            {
                return copy;
            }
            IoStatus status = WriteBackingLink(file: null, format: null);
            return status == IoStatus.Ok ? copy : copy with { Status = status, Error = Explain(status, "removing the backing file link") };
        }
    }

    /// <summary>
    /// Copies into the overlay every unallocated unit whose contents through the current backing
    /// chain differ from its contents through <paramref name="newBacking"/> (zeros when null, and past
    /// either device's end). Afterwards the virtual disk reads the same with either backing.
    /// </summary>
    private OverlayOperationResult CopyDifferences(IBlockDevice? newBacking, long bytesPerSecond, long checkpointBytes, Action<long, long>? progress, CancellationToken cancellationToken)
    {
        if (_failure != null)
        {
            return Failed(IoStatus.IoError, _failure);
        }
        long clusters = (_virtualSize + _clusterSize - 1) >> _clusterBits;
        using AlignedBlock current = new(_clusterSize);
        using AlignedBlock replacement = new(_clusterSize);
        Stopwatch clock = Stopwatch.StartNew();
        CopyCounters counters = default;
        long sinceCheckpoint = 0;
        long reported = 0;
        for (long cluster = 0; cluster < clusters; cluster++)
        {
            if (cancellationToken.IsCancellationRequested)
            {
                // Whatever was copied becomes durable and referenced, so a re-run does not repeat it.
                Flush();
                cancellationToken.ThrowIfCancellationRequested();
            }
            long copiedBefore = counters.Copied;
            bool metadataChanged = false;
            ReaderWriterLockSlim stripe = StripeFor(cluster);
            IoStatus status;
            EnterExclusive(stripe, cluster);
            try
            {
                status = CopyDifferencesInCluster(cluster, newBacking, current, replacement, ref metadataChanged, ref counters);
            }
            finally
            {
                ExitExclusive(stripe, cluster);
            }
            // Copies are no answered write: a crash loses them, not data (the base still shows through),
            // so they are not written before the next request's mapping (which flushes their data first).
            status = AfterMetadataChange(status, metadataChanged, publish: false);
            long examined = Math.Min(_virtualSize, (cluster + 1) << _clusterBits);
            if (newBacking == null && status == IoStatus.Ok)
            {
                _statistics.ReportHydration(examined, _virtualSize);
            }
            if (status != IoStatus.Ok)
            {
                return Failed(status, Explain(status, $"copying guest cluster {cluster}")) with { BytesExamined = cluster << _clusterBits, BytesCopied = counters.Copied };
            }
            sinceCheckpoint += counters.Copied - copiedBefore;
            if (sinceCheckpoint >= checkpointBytes)
            {
                status = Flush();
                if (status != IoStatus.Ok)
                {
                    return Failed(status, Explain(status, "writing back metadata at a checkpoint")) with { BytesExamined = examined, BytesCopied = counters.Copied };
                }
                sinceCheckpoint = 0;
            }
            if (progress != null && (examined - reported >= ProgressIntervalBytes || examined == _virtualSize))
            {
                progress(examined, _virtualSize);
                reported = examined;
            }
            Throttle(clock, counters.Read, bytesPerSecond, cancellationToken);
        }
        IoStatus final = Flush();
        return new OverlayOperationResult
        {
            Status = final,
            BytesExamined = _virtualSize,
            BytesCopied = counters.Copied,
            Error = final == IoStatus.Ok ? null : Explain(final, "writing back metadata"),
        };
    }

    private struct CopyCounters
    {
        public long Read;
        public long Copied;
    }

    /// <summary>One cluster of <see cref="CopyDifferences"/>; the caller holds the cluster's stripe exclusively.</summary>
    private IoStatus CopyDifferencesInCluster(long guestCluster, IBlockDevice? newBacking, AlignedBlock current, AlignedBlock replacement, ref bool metadataChanged, ref CopyCounters counters)
    {
        IoStatus status = LookupEntryLocked(guestCluster, out L2Entry entry);
        if (status != IoStatus.Ok)
        {
            return status;
        }
        long clusterStart = guestCluster << _clusterBits;
        int clusterLength = (int)Math.Min(_clusterSize, _virtualSize - clusterStart);
        int units = (clusterLength + _unitSize - 1) >> _unitBits;
        int unit = 0;
        while (unit < units)
        {
            UnitState state = StateOf(entry, unit);
            if (state is UnitState.Compressed or UnitState.Invalid)
            {
                _lastError = state == UnitState.Compressed
                    ? $"guest cluster {guestCluster} is compressed; compressed clusters are not supported (convert the image with 'qemu-img convert' first)"
                    : $"guest cluster {guestCluster} has an invalid L2 entry (0x{entry.Word:x16}, bitmap 0x{entry.Bitmap:x16})";
                return IoStatus.IoError;
            }
            if (state != UnitState.Unallocated)
            {
                unit++;
                continue;
            }
            int runEnd = unit + 1;
            while (runEnd < units && StateOf(entry, runEnd) == UnitState.Unallocated)
            {
                runEnd++;
            }
            int start = unit << _unitBits;
            int end = Math.Min(runEnd << _unitBits, clusterLength);
            IoBuffer now = current.AsIoBuffer(start, end - start);
            status = ReadBacking(clusterStart + start, end - start, new ReadOnlySpan<IoBuffer>(in now));
            if (status == IoStatus.Ok && newBacking != null)
            {
                status = ReadView(newBacking, clusterStart + start, replacement.AsIoBuffer(start, end - start));
            }
            if (status != IoStatus.Ok)
            {
                return status == IoStatus.OutOfRange ? IoStatus.IoError : status;
            }
            counters.Read += (end - start) * (newBacking != null ? 2L : 1L);

            // Write each run of units whose contents would change with the new backing.
            int at = start;
            while (at < end)
            {
                int unitEnd = Math.Min(at + _unitSize, end);
                if (!Differs(current, replacement, newBacking != null, at, unitEnd))
                {
                    at = unitEnd;
                    continue;
                }
                int differingEnd = unitEnd;
                while (differingEnd < end)
                {
                    int next = Math.Min(differingEnd + _unitSize, end);
                    if (!Differs(current, replacement, newBacking != null, differingEnd, next))
                    {
                        break;
                    }
                    differingEnd = next;
                }
                IoBuffer data = current.AsIoBuffer(at, differingEnd - at);
                status = WriteInCluster(guestCluster, at, differingEnd - at, new ReadOnlySpan<IoBuffer>(in data), ref metadataChanged, copiedData: true);
                if (status != IoStatus.Ok)
                {
                    return status;
                }
                counters.Copied += differingEnd - at;
                _statistics.CountCopiedBytes(differingEnd - at);
                at = differingEnd;
            }
            unit = runEnd;
        }
        return IoStatus.Ok;
    }

    private static bool Differs(AlignedBlock current, AlignedBlock replacement, bool haveReplacement, int start, int end)
    {
        ReadOnlySpan<byte> now = current.Span[start..end];
        return haveReplacement ? !now.SequenceEqual(replacement.Span[start..end]) : now.ContainsAnyExcept((byte)0);
    }

    /// <summary>Reads a device as a layer of the virtual disk: past its end it reads as zeros.</summary>
    private static IoStatus ReadView(IBlockDevice device, long offset, IoBuffer target)
    {
        long size = device.Info.SizeBytes;
        if (offset >= size)
        {
            target.AsSpan().Clear();
            return IoStatus.Ok;
        }
        if (target.Length <= size - offset)
        {
            return device.Read(offset, new ReadOnlySpan<IoBuffer>(in target));
        }
        int inside = (int)(size - offset);
        IoBuffer head = new(target.Address, inside);
        target.AsSpan()[inside..].Clear();
        return device.Read(offset, new ReadOnlySpan<IoBuffer>(in head));
    }

    private static void Throttle(Stopwatch clock, long bytes, long bytesPerSecond, CancellationToken cancellationToken)
    {
        if (bytesPerSecond <= 0)
        {
            return;
        }
        double ahead = (double)bytes / bytesPerSecond - clock.Elapsed.TotalSeconds;
        if (ahead > 0)
        {
            int milliseconds = (int)Math.Min(Math.Ceiling(ahead * 1000), MaximumThrottleSleepMilliseconds);
            cancellationToken.WaitHandle.WaitOne(milliseconds);
        }
    }

    private OverlayOperationResult Failed(IoStatus status, string error) => new() { Status = status, Error = error };

    /// <summary>The most specific explanation the image has for a failed step.</summary>
    private string Explain(IoStatus status, string what)
    {
        string? detail = _failure ?? _lastError;
        return detail == null ? $"{what} failed ({status.Describe()})" : $"{what} failed ({status.Describe()}): {detail}";
    }
}
