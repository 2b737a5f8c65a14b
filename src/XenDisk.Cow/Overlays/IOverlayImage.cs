using XenDisk.Cow.Policies;
using XenDisk.Storage;

namespace XenDisk.Cow.Overlays;

/// <summary>
/// An open copy-on-write overlay, whatever its format (a qcow2 image, a flat bitmap overlay): the
/// operations the backend, the service and the command line use on an overlay, with one set of option
/// and result types, so that none of them needs to know which format it holds. What differs by format
/// when no image is open (recognising, checking, mapping and operating on a file) lives in
/// <see cref="OverlayFormat"/>, reached through <see cref="Format"/>.
/// Ownership: the overlay owns the devices it was opened with when its open options say so;
/// <see cref="Close"/> and <see cref="IDisposable.Dispose"/> release them, and only the first of the two counts.
/// </summary>
public interface IOverlayImage : IBlockDevice, ICopyOnWriteImage
{
    /// <summary>The overlay's format.</summary>
    OverlayFormat Format { get; }

    /// <summary>When metadata reaches the disk (docs/OPERATIONS.md, "Stopping and restarting": what each policy keeps after a crash).</summary>
    MetadataPolicy Policy { get; }

    /// <summary>
    /// Why an image opened for writing serves read-only (a corrupt bit, a format version the engine
    /// only reads), or null when it is writable or was opened read-only on request.
    /// </summary>
    string? ReadOnlyReason { get; }

    /// <summary>
    /// Closes the overlay cleanly: all metadata written back and flushed, the image marked clean.
    /// Returns the outcome, which <see cref="IDisposable.Dispose"/> cannot; a second call returns Ok.
    /// </summary>
    IoStatus Close();

    /// <summary>
    /// Copies everything the overlay still reads from its base into it, so that it no longer needs
    /// the base. Runs beside guest I/O; resumable after an interruption. Cancellation leaves the
    /// overlay consistent and throws <see cref="OperationCanceledException"/>.
    /// </summary>
    OverlayOperationResult Hydrate(OverlayHydrateOptions? options = null, CancellationToken cancellationToken = default);

    /// <summary>
    /// Writes the overlay's data into its base, which must have been opened writable, and with
    /// <see cref="OverlayCommitOptions.EmptyOverlay"/> empties the overlay afterwards.
    /// A base that cannot take the data (absent, read-only, too small) throws <see cref="InvalidOperationException"/>.
    /// </summary>
    OverlayOperationResult Commit(OverlayCommitOptions? options = null, CancellationToken cancellationToken = default);

    /// <summary>Where each range of the virtual disk is served from, in order and merged; only this image's own metadata is read.</summary>
    IReadOnlyList<OverlayExtent> Map(Action<long, long>? progress = null);
}
