using XenDisk.Cow.Overlays;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>The format-neutral overlay contract (<see cref="IOverlayImage"/>) over the qcow2 engine's own operations.</summary>
public sealed partial class Qcow2Image : IOverlayImage
{
    OverlayFormat IOverlayImage.Format => Qcow2OverlayFormat.Instance;

    OverlayOperationResult IOverlayImage.Hydrate(OverlayHydrateOptions? options, CancellationToken cancellationToken) =>
        Hydrate(ToQcow2(options), cancellationToken);

    OverlayOperationResult IOverlayImage.Commit(OverlayCommitOptions? options, CancellationToken cancellationToken) =>
        Commit(ToQcow2(options), cancellationToken);

    IReadOnlyList<OverlayExtent> IOverlayImage.Map(Action<long, long>? progress) =>
        Map(progress).Select(e => new OverlayExtent(e.Offset, e.Length, e.Kind switch
        {
            Qcow2ExtentKind.Data => OverlayExtentKind.Data,
            Qcow2ExtentKind.Zero => OverlayExtentKind.Zero,
            Qcow2ExtentKind.Backing => OverlayExtentKind.Base,
            Qcow2ExtentKind.Compressed => OverlayExtentKind.Compressed,
            _ => OverlayExtentKind.Unsupported,
        }, e.Kind is Qcow2ExtentKind.Data or Qcow2ExtentKind.Compressed ? e.HostOffset : null)).ToList();

    internal static Qcow2HydrateOptions? ToQcow2(OverlayHydrateOptions? options) => options == null ? null : new Qcow2HydrateOptions
    {
        BytesPerSecond = options.BytesPerSecond,
        CheckpointBytes = options.CheckpointBytes,
        Progress = ToQcow2(options.Progress),
    };

    internal static Qcow2CommitOptions? ToQcow2(OverlayCommitOptions? options) => options == null ? null : new Qcow2CommitOptions
    {
        EmptyOverlay = options.EmptyOverlay,
        Progress = ToQcow2(options.Progress),
    };

    // The qcow2 engine reports (bytes examined, virtual size); it counts the bytes copied only in its result.
    private static Action<long, long>? ToQcow2(Action<OverlayProgress>? progress) =>
        progress == null ? null : (examined, total) => progress(new OverlayProgress(examined, total, null));
}
