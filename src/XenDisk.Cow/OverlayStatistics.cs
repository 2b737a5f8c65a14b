using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow;

/// <summary>
/// A copy-on-write image: a qcow2 image or a bitmap overlay, as opposed to a raw device. What lets a
/// provider (and the telemetry above it) tell overlays apart from plain storage and read their counters.
/// </summary>
public interface ICopyOnWriteImage
{
    /// <summary>The overlay's storage: its file or device path when it has one, else its description.</summary>
    string ImageName { get; }

    /// <summary>The image's counters, live for as long as it is open.</summary>
    OverlayStatistics Statistics { get; }

    /// <summary>
    /// Why the most recent failed request failed, as far as the engine knows more than its
    /// <c>IoStatus</c> says (a corruption, an unsupported cluster type), or null.
    /// </summary>
    string? LastError => null;
}

/// <summary>
/// What a copy-on-write engine counts about one open image. The engine increments the counters where
/// the work happens (Interlocked, no lock, no allocation); readers (telemetry at export time) read
/// them whenever they like. Every counter only grows while the image is open. The two momentary
/// values (<see cref="OverlayAllocatedBytes"/>, <see cref="HydrationProgress"/>) are computed by the
/// engine when read.
/// </summary>
public sealed class OverlayStatistics
{
    private readonly Func<long> _allocatedBytes;
    private readonly Func<bool> _standalone;
    private long _copyUps;
    private long _copiedBytes;
    private long _metadataWrites;
    private long _metadataFlushes;
    private long _sharedWriteBacks;
    private long _cacheHits;
    private long _cacheMisses;
    private long _hydrationExaminedBytes;
    private long _hydrationTotalBytes;
    private Action? _closed;
    private int _isClosed;

    /// <param name="allocatedBytes">The bytes the overlay occupies now; called by readers, so it must be cheap and lock-free.</param>
    /// <param name="standalone">True when the image no longer needs its base (it was hydrated before it was opened).</param>
    internal OverlayStatistics(Func<long> allocatedBytes, Func<bool> standalone)
    {
        _allocatedBytes = allocatedBytes;
        _standalone = standalone;
    }

    /// <summary>Clusters, subclusters or grains completed from the base before a partial write landed in them.</summary>
    public long CopyUps => Volatile.Read(ref _copyUps);

    /// <summary>Bytes read from the base and written into the overlay, by copy-ups and by hydration.</summary>
    public long CopiedBytes => Volatile.Read(ref _copiedBytes);

    /// <summary>Metadata blocks written: qcow2 L1 runs, L2 tables, refcount blocks and table runs, headers; bitmap map blocks and headers.</summary>
    public long MetadataWrites => Volatile.Read(ref _metadataWrites);

    /// <summary>Flushes the engine issued to order and persist its metadata (write-back passes, header updates).</summary>
    public long MetadataFlushes => Volatile.Read(ref _metadataFlushes);

    /// <summary>Requests to make metadata durable (sync writes, guest flushes) answered by a write-back pass another request ran (group commit).</summary>
    public long SharedWriteBacks => Volatile.Read(ref _sharedWriteBacks);

    /// <summary>Metadata lookups (qcow2 L2 tables and refcount blocks) answered from memory. A bitmap overlay holds its whole map in memory and never looks anything up.</summary>
    public long CacheHits => Volatile.Read(ref _cacheHits);

    /// <summary>Metadata lookups that had to read the image.</summary>
    public long CacheMisses => Volatile.Read(ref _cacheMisses);

    /// <summary>Bytes the overlay occupies now (qcow2: the host clusters in use up to the end of the file; bitmap: the data of the grains it holds).</summary>
    public long OverlayAllocatedBytes => _allocatedBytes();

    /// <summary>
    /// Fraction (0..1) of the virtual disk a hydration has brought into the overlay: the position of the
    /// running (or last) hydration, 1 once one completed or when the image was already standalone; null
    /// while no hydration has run on this open image.
    /// </summary>
    public double? HydrationProgress
    {
        get
        {
            if (_standalone())
            {
                return 1.0;
            }
            long total = Volatile.Read(ref _hydrationTotalBytes);
            if (total <= 0)
            {
                return null;
            }
            return Math.Clamp(Volatile.Read(ref _hydrationExaminedBytes) / (double)total, 0.0, 1.0);
        }
    }

    /// <summary>True once the image was disposed: its counters no longer change.</summary>
    public bool IsClosed => Volatile.Read(ref _isClosed) != 0;

    /// <summary>
    /// Runs <paramref name="callback"/> once when the image closes, at once if it already has. One
    /// callback per image: the provider that handed the image out uses it to forget it.
    /// </summary>
    internal void WhenClosed(Action callback)
    {
        // Exchange (a full fence) on both sides: whichever of WhenClosed and MarkClosed runs second sees
        // the other's write, and the exchange on _closed lets exactly one of them run the callback.
        Interlocked.Exchange(ref _closed, callback);
        if (Volatile.Read(ref _isClosed) != 0)
        {
            Interlocked.Exchange(ref _closed, null)?.Invoke();
        }
    }

    internal void MarkClosed()
    {
        Interlocked.Exchange(ref _isClosed, 1);
        Interlocked.Exchange(ref _closed, null)?.Invoke();
    }

    internal void CountCopyUps(int units, long bytes)
    {
        Interlocked.Add(ref _copyUps, units);
        Interlocked.Add(ref _copiedBytes, bytes);
    }

    internal void CountCopiedBytes(long bytes) => Interlocked.Add(ref _copiedBytes, bytes);

    internal void CountMetadataWrites(int blocks) => Interlocked.Add(ref _metadataWrites, blocks);

    internal void CountMetadataFlush() => Interlocked.Increment(ref _metadataFlushes);

    internal void CountSharedWriteBack() => Interlocked.Increment(ref _sharedWriteBacks);

    internal void CountCacheHit() => Interlocked.Increment(ref _cacheHits);

    internal void CountCacheMiss() => Interlocked.Increment(ref _cacheMisses);

    /// <summary>A hydration pass has examined <paramref name="examinedBytes"/> of <paramref name="totalBytes"/>.</summary>
    internal void ReportHydration(long examinedBytes, long totalBytes)
    {
        // Total first: a reader that sees the new position also sees a total to divide it by.
        Volatile.Write(ref _hydrationTotalBytes, totalBytes);
        Volatile.Write(ref _hydrationExaminedBytes, examinedBytes);
    }

    /// <summary>The name an engine reports for its overlay storage: a path when the device has one.</summary>
    internal static string NameOf(IBlockDevice overlay) => overlay switch
    {
        FileImageDevice file => file.Path,
        RawBlockDevice raw => raw.Path,
        _ => overlay.Info.Description,
    };
}
