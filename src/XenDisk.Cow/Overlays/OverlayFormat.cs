using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Overlays;

/// <summary>The base an overlay records: the name as stored, resolved to a full path.</summary>
/// <param name="NeededForReads">False when the overlay is standalone (hydrated): it reads nothing from the base, which only a commit would open.</param>
public sealed record OverlayBase(string Name, string FullPath, bool NeededForReads);

/// <summary>
/// One overlay format (qcow2, bitmap) as a value: what tools do with an image of the format that is
/// not open, and that an open <see cref="IOverlayImage"/> names. Callers hold an <see cref="OverlayFormat"/>
/// rather than a format name or enum, so that adding an operation means adding it here and in each
/// format, and no caller branches on the format. Each image file is untrusted: every member validates
/// what it reads, and failures throw <see cref="StorageException"/> with a message for an operator.
/// </summary>
public abstract class OverlayFormat
{
    /// <summary>The most leading bytes of a file <see cref="Recognises"/> looks at.</summary>
    public const int MagicLength = 8;

    public static OverlayFormat Qcow2 => Qcow2OverlayFormat.Instance;

    public static OverlayFormat Bitmap => BitmapOverlayFormat.Instance;

    public static IReadOnlyList<OverlayFormat> All { get; } = [Qcow2OverlayFormat.Instance, BitmapOverlayFormat.Instance];

    /// <summary>The name in options, target strings and output ("qcow2", "bitmap").</summary>
    public abstract string Name { get; }

    /// <summary>The name of the allocation-unit option of a cow: target (cluster=, grain=).</summary>
    public abstract string UnitOptionName { get; }

    /// <summary>True when <paramref name="firstBytes"/> (up to <see cref="MagicLength"/> bytes of a file) carry this format's magic.</summary>
    public abstract bool Recognises(ReadOnlySpan<byte> firstBytes);

    /// <summary>The format named <paramref name="name"/> (case-insensitive), or null.</summary>
    public static OverlayFormat? Find(string? name) =>
        All.FirstOrDefault(format => string.Equals(format.Name, name, StringComparison.OrdinalIgnoreCase));

    /// <summary>The format whose magic <paramref name="firstBytes"/> carry, or null (raw).</summary>
    public static OverlayFormat? Recognise(ReadOnlySpan<byte> firstBytes)
    {
        foreach (OverlayFormat format in All)
        {
            if (format.Recognises(firstBytes))
            {
                return format;
            }
        }
        return null;
    }

    /// <summary>
    /// Checks the metadata of the image on <paramref name="image"/> (writable when repairing), and
    /// repairs what <paramref name="repair"/> allows. Progress is (units done, units in all).
    /// Throws <see cref="StorageException"/> when the image cannot be checked at all (unreadable header).
    /// </summary>
    public abstract OverlayCheckReport Check(IBlockDevice image, OverlayRepair repair, Action<long, long>? progress = null);

    /// <summary>Where each range of the image's virtual disk is served from, reading only the image (never its base).</summary>
    public abstract IReadOnlyList<OverlayExtent> Map(IBlockDevice image, Action<long, long>? progress = null);

    /// <summary>
    /// The base the image on <paramref name="image"/> (stored at <paramref name="imagePath"/>) records,
    /// not yet checked against any policy; null when it records none it could use.
    /// </summary>
    public abstract OverlayBase? RecordedBase(IBlockDevice image, string imagePath);

    /// <summary>
    /// Opens the image at <paramref name="imagePath"/> with the bases <see cref="OverlayFileOptions.BackingPolicy"/>
    /// allows, hydrates it (see <see cref="IOverlayImage.Hydrate"/>) and closes it cleanly. A failed run throws.
    /// </summary>
    public abstract OverlayOperationResult Hydrate(string imagePath, OverlayHydrateOptions? options = null, OverlayFileOptions? files = null, CancellationToken cancellationToken = default);

    /// <summary>
    /// Opens the image at <paramref name="imagePath"/> and its base writable, commits it (see
    /// <see cref="IOverlayImage.Commit"/>) and closes both cleanly. A failed run throws.
    /// </summary>
    public abstract OverlayOperationResult Commit(string imagePath, OverlayCommitOptions? options = null, OverlayFileOptions? files = null, CancellationToken cancellationToken = default);

    /// <summary>
    /// Describes the image on <paramref name="image"/> (stored at <paramref name="imagePath"/>) from its
    /// header and tables, without opening it for I/O or following its base. Throws
    /// <see cref="StorageException"/> for an image the format refuses.
    /// </summary>
    public abstract OverlayDescription Describe(IBlockDevice image, string imagePath);

    /// <summary>Where a base recorded as <paramref name="baseName"/> in the image at <paramref name="imagePath"/> lies, by the format's rule.</summary>
    public abstract string ResolveBasePath(string imagePath, string baseName);

    /// <summary>
    /// The refusal of a file operation this format does not have (<see cref="OverlayOperationResult.Unsupported"/>,
    /// naming the image), or null when it has it. The operation itself refuses the same way when called.
    /// </summary>
    public abstract OverlayOperationResult? Refuses(OverlayFileOperation operation, string imagePath);

    /// <summary>
    /// Changes the virtual size of the image at <paramref name="imagePath"/> (which no one may have open)
    /// to what <paramref name="newSize"/> returns for the current size; null from it leaves the image
    /// as it is and returns Ok with nothing examined. A size the format cannot take is
    /// <see cref="OverlayOperationResult.Invalid"/> or <see cref="OverlayOperationResult.Unsupported"/>.
    /// </summary>
    public abstract OverlayOperationResult Resize(string imagePath, Func<long, long?> newSize, OverlayFileOptions? files = null);

    /// <summary>
    /// Freezes the image at <paramref name="imagePath"/> by stacking a new, empty overlay on it at
    /// <paramref name="newOverlayPath"/>. Throws <see cref="StorageException"/> when it cannot.
    /// </summary>
    public abstract OverlayOperationResult Snapshot(string imagePath, string newOverlayPath);

    /// <summary>Points the image at a different base (or none), copying what differs first unless unsafe.</summary>
    public abstract OverlayOperationResult Rebase(string imagePath, OverlayRebaseOptions options, OverlayFileOptions? files = null, CancellationToken cancellationToken = default);

    /// <summary>The unit a new image of the format allocates: what counts as one piece of data when measuring.</summary>
    public abstract int AllocationUnit { get; }

    /// <summary>
    /// How large a new image of this format with the default settings would be for a disk of
    /// <paramref name="virtualSize"/> holding <paramref name="dataBytes"/> (whole <see cref="AllocationUnit"/>s).
    /// </summary>
    public abstract OverlaySizeEstimate Measure(long virtualSize, long dataBytes);

    /// <summary>
    /// Why a new image of this format cannot have the base described (<paramref name="hasBase"/>, of
    /// format <paramref name="baseFormat"/>, null when not given), for an operator; null when it can.
    /// </summary>
    public abstract string? BaseRefusal(bool hasBase, string? baseFormat);

    /// <summary>
    /// Creates a new image at <paramref name="imagePath"/> (which must not exist). A setting the format
    /// does not know or cannot take is <see cref="OverlayOperationResult.Invalid"/> and nothing is left
    /// behind; a file that cannot be made throws <see cref="StorageException"/>.
    /// </summary>
    public abstract OverlayOperationResult Create(string imagePath, OverlayCreateOptions options);

    /// <summary>
    /// Why this format cannot be a conversion's target with <paramref name="options"/>
    /// (<see cref="OverlayOperationResult.Unsupported"/> for a format that cannot be one at all,
    /// <see cref="OverlayOperationResult.Invalid"/> for an option it does not take), or null when it can.
    /// </summary>
    public abstract OverlayOperationResult? RefusesConversionTarget(OverlayConversionOptions options);

    /// <summary>
    /// Creates a standalone image of <paramref name="virtualSize"/> at <paramref name="imagePath"/>,
    /// replacing a file there, for a conversion to write into. Throws <see cref="StorageException"/>.
    /// </summary>
    public abstract OverlayConversionTarget CreateConversionTarget(string imagePath, long virtualSize, OverlayConversionOptions options);

    /// <summary>True when an image of this format can be another image's base (backing file).</summary>
    public abstract bool CanBeBase { get; }

    /// <summary>
    /// Changes the format options of the image at <paramref name="imagePath"/> (which no one may have
    /// open) as qemu-img amend -o does. An option the format does not know or cannot take is
    /// <see cref="OverlayOperationResult.Invalid"/>, checked before anything is written.
    /// </summary>
    public abstract OverlayOperationResult Amend(string imagePath, IReadOnlyList<string> settings, OverlayFileOptions? files = null);

    /// <summary>
    /// Applies <paramref name="edit"/>'s steps in order to the persistent dirty bitmaps of the image at
    /// <paramref name="imagePath"/> (which no one may have open) and stores them in the format QEMU reads.
    /// A failed step stops there with a message naming the step.
    /// </summary>
    public abstract OverlayOperationResult EditBitmaps(string imagePath, OverlayBitmapEdit edit, OverlayFileOptions? files = null);

    /// <summary>
    /// Who holds the image file at <paramref name="imagePath"/> so that opening it for reading (or, with
    /// <paramref name="forWriting"/>, for writing) would be refused, as QEMU would be refused: the
    /// message naming the holder, or null when it is free. Every format answers alike, and so does a raw
    /// image: the locks are QEMU's file locks on the image file (<see cref="ImageLocks"/>), whatever the
    /// format inside, so this needs no format and no one has to recognise the file first.
    /// </summary>
    public static string? LockHolder(string imagePath, bool forWriting) => ImageLocks.Holder(imagePath, forWriting);

    /// <summary>
    /// Breaks the locks on the image file at <paramref name="imagePath"/>, which no format can: a file's
    /// locks belong to its holder's open file description and end with it. Always the refusal, naming
    /// the holder, or Ok when there is nothing to break.
    /// </summary>
    public static OverlayOperationResult BreakLock(string imagePath) => LockHolder(imagePath, forWriting: true) is { } holder
        ? OverlayOperationResult.Unsupported($"{holder}. The locks on an image file end with the process that holds them; stop it (they cannot be broken from outside)")
        : new OverlayOperationResult { Status = IoStatus.Ok };

    /// <summary>
    /// Why an image of this format cannot live on an iSCSI LUN (for an operator), or null when it can.
    /// </summary>
    public virtual string? LunRefusal => null;

    /// <summary>
    /// Opens the image at <paramref name="path"/> (a full path, or a LUN's URL) for guest-style I/O
    /// through <paramref name="provider"/>, the backend's disk provider, so that a tool gets the same
    /// devices, caches and checks a guest's disk gets, with the base the image records.
    /// <paramref name="openStorage"/> opens the image's own storage (path, read-only), locked as QEMU
    /// locks images. The caller owns the device returned. Throws <see cref="StorageException"/>.
    /// </summary>
    /// <param name="policy">The disk target's policy= option (sync, flush, lazy, transient), or null for the default.</param>
    public abstract IBlockDevice OpenForIo(string path, bool readOnly, IDiskProvider provider, Func<string, bool, IBlockDevice> openStorage, string? policy = null);

    /// <summary>
    /// Opens the overlay <see cref="OverlayAttachment.OverlayPath"/> over the opened base, creating it
    /// over the base when it is absent, blank or transient; an existing overlay must record this base.
    /// On success the image owns <paramref name="baseDevice"/> (or has disposed it, when the overlay no
    /// longer needs it); on failure the caller still owns it.
    /// </summary>
    internal abstract AttachedOverlay Attach(OverlayAttachment attachment, IBlockDevice baseDevice);

    /// <summary>
    /// Opens an existing overlay that no longer needs its base (hydrated); null when the file holds no
    /// such overlay, so that the caller reports the missing base.
    /// </summary>
    internal abstract IOverlayImage? AttachStandalone(OverlayAttachment attachment);

    public override string ToString() => Name;
}
