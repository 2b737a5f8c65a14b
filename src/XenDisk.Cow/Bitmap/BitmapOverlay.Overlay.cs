using XenDisk.Cow.Overlays;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Bitmap;

/// <summary>The format-neutral overlay contract (<see cref="IOverlayImage"/>) over the bitmap overlay's own operations.</summary>
public sealed partial class BitmapOverlay : IOverlayImage
{
    OverlayFormat IOverlayImage.Format => BitmapOverlayFormat.Instance;

    /// <summary>A bitmap overlay is read-only only when opened so: it has no feature it can only read.</summary>
    string? IOverlayImage.ReadOnlyReason => null;

    OverlayOperationResult IOverlayImage.Hydrate(OverlayHydrateOptions? options, CancellationToken cancellationToken)
    {
        options ??= new OverlayHydrateOptions();
        long examined = 0;
        long copied = 0;
        IoStatus status = Hydrate(new HydrateOptions
        {
            BytesPerSecond = options.BytesPerSecond,
            CheckpointBytes = options.CheckpointBytes,
            Progress = Report(options.Progress, (e, c) => (examined, copied) = (e, c)),
        }, cancellationToken);
        return Result(status, examined, copied, "copying into the bitmap overlay");
    }

    OverlayOperationResult IOverlayImage.Commit(OverlayCommitOptions? options, CancellationToken cancellationToken)
    {
        options ??= new OverlayCommitOptions();
        long examined = 0;
        long copied = 0;
        IoStatus status = Commit(new CommitOptions
        {
            ClearOverlay = options.EmptyOverlay,
            Progress = Report(options.Progress, (e, c) => (examined, copied) = (e, c)),
        });
        return Result(status, examined, copied, "committing the bitmap overlay into its base");
    }

    /// <summary>The grain map as extents: mapped grains are stored at the data area's offset plus their guest offset (docs/BITMAP-FORMAT.md).</summary>
    IReadOnlyList<OverlayExtent> IOverlayImage.Map(Action<long, long>? progress)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        List<OverlayExtent> extents = [];
        long grains = _map.GrainCount;
        for (long grain = 0; grain < grains; grain++)
        {
            long offset = GrainStart(grain);
            AppendGrain(extents, _map.Get(grain), offset, GrainEnd(grain) - offset, _baseSize, _dataOffset);
        }
        progress?.Invoke(_virtualSize, _virtualSize);
        return extents;
    }

    /// <summary>Appends one grain of <paramref name="state"/> at <paramref name="offset"/> to a map.</summary>
    internal static void AppendGrain(List<OverlayExtent> extents, GrainState state, long offset, long length, long baseSize, long dataOffset)
    {
        OverlayExtentKind kind = state switch
        {
            GrainState.Mapped => OverlayExtentKind.Data,
            GrainState.Discarded => OverlayExtentKind.Zero,
            // Past the base's end a grain that reads through reads zeros.
            GrainState.Base => offset >= baseSize ? OverlayExtentKind.Zero : OverlayExtentKind.Base,
            _ => OverlayExtentKind.Unsupported,
        };
        OverlayExtent.Append(extents, offset, length, kind, kind == OverlayExtentKind.Data ? dataOffset + offset : null);
    }

    /// <summary>Turns grain progress into guest bytes, for the caller and for the result.</summary>
    private Action<GrainProgress> Report(Action<OverlayProgress>? progress, Action<long, long> record) => p =>
    {
        long examined = Math.Min(p.GrainsDone * _grainSize, _virtualSize);
        record(examined, p.BytesCopied);
        progress?.Invoke(new OverlayProgress(examined, _virtualSize, p.BytesCopied));
    };

    private OverlayOperationResult Result(IoStatus status, long examined, long copied, string what) => new()
    {
        Status = status,
        BytesExamined = status == IoStatus.Ok ? _virtualSize : examined,
        BytesCopied = copied,
        Error = status == IoStatus.Ok ? null : $"{what} failed ({status.Describe()})",
    };
}
