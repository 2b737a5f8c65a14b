using XenDisk.Cow;
using XenDisk.Telemetry.CopyOnWrite;

namespace XenDisk.Service.Telemetry;

/// <summary>
/// Hands the copy-on-write engine's per-image counters to telemetry: at export time it reads the
/// <see cref="OverlayStatistics"/> of every overlay the disk provider has open. The engine does not
/// know telemetry and telemetry does not know the engine; this adapter is the only place both meet.
/// </summary>
public sealed class CopyOnWriteMetricsSource : ICopyOnWriteMetricsSource
{
    private readonly Func<IReadOnlyList<ICopyOnWriteImage>> _openOverlays;

    /// <param name="openOverlays">The overlays open now (e.g. <c>ImageDiskProvider.GetOpenOverlays</c>); called once per export.</param>
    public CopyOnWriteMetricsSource(Func<IReadOnlyList<ICopyOnWriteImage>> openOverlays)
    {
        ArgumentNullException.ThrowIfNull(openOverlays);
        _openOverlays = openOverlays;
    }

    public IReadOnlyList<CopyOnWriteImageCounters> GetImages()
    {
        IReadOnlyList<ICopyOnWriteImage> overlays = _openOverlays();
        var images = new List<CopyOnWriteImageCounters>(overlays.Count);
        foreach (ICopyOnWriteImage overlay in overlays)
        {
            OverlayStatistics statistics = overlay.Statistics;
            if (statistics.IsClosed)
            {
                // Disposed between the snapshot and now: its series ends with the image.
                continue;
            }

            images.Add(new CopyOnWriteImageCounters
            {
                Image = overlay.ImageName,
                CopyUps = statistics.CopyUps,
                CopiedBytes = statistics.CopiedBytes,
                MetadataWrites = statistics.MetadataWrites,
                MetadataFlushes = statistics.MetadataFlushes,
                CacheHits = statistics.CacheHits,
                CacheMisses = statistics.CacheMisses,
                OverlayAllocatedBytes = statistics.OverlayAllocatedBytes,
                HydrationProgress = statistics.HydrationProgress,
            });
        }

        return images;
    }
}
