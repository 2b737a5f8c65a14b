using System.Globalization;
using XenDisk.Cow.Overlays;
using XenDisk.Storage;
using XenDisk.Storage.Iscsi;

namespace XenDisk.Cow.Bitmap;

/// <summary>
/// The file operations of tools on a bitmap overlay. The overlay tracks one fixed base, grain for
/// grain (docs/BITMAP-FORMAT.md), so it can be described but has no resize, snapshot, rebase or
/// measure: each is refused with the reason and what to do instead.
/// </summary>
internal sealed partial class BitmapOverlayFormat
{
    public override int AllocationUnit => BitmapFormat.DefaultGrainSize;

    public override OverlayDescription Describe(IBlockDevice image, string imagePath)
    {
        BitmapCheckReport report = BitmapChecker.Check(image, repair: false);
        BitmapHeader header = report.Header ?? throw new StorageException($"'{imagePath}' is not a usable bitmap overlay: {string.Join("; ", report.Problems)}");
        List<string> features = [];
        if (header.IsDirty) features.Add("dirty");
        if (header.IsStandalone) features.Add("standalone");
        bool corrupt = (header.IncompatibleFeatures & BitmapFormat.IncompatibleCorrupt) != 0;
        if (corrupt) features.Add("corrupt");
        if ((header.IncompatibleFeatures & BitmapFormat.IncompatibleTransient) != 0) features.Add("transient");
        bool hasBase = header.BaseName.Length > 0;
        return new OverlayDescription
        {
            VirtualSize = header.VirtualSize,
            FileSize = image.Info.SizeBytes,
            GrainSize = header.GrainSize,
            BackingFile = hasBase ? header.BaseName : null,
            BackingFormat = hasBase ? "raw" : null,
            FullBackingFilename = hasBase ? FullName(header.BaseName) : null,
            AllocatedBytes = report.Counts.Mapped * header.GrainSize,
            Features = features,
            Dirty = header.IsDirty,
            Corrupt = corrupt,
            MetadataBytesPerGiB = BitmapFormat.MapBytesPerGiB(header.GrainSize),
            Version = (int)BitmapFormat.Version,
            Standalone = header.IsStandalone,
            BaseSize = header.BaseSize,
            Details =
            [
                Invariant($"version: {BitmapFormat.Version}"),
                Invariant($"base size: {header.BaseSize}"),
                $"standalone: {(header.IsStandalone ? "true" : "false")}",
            ],
        };
    }

    /// <summary>
    /// A bitmap overlay is opened over the base its header records (a file by absolute path, or a LUN),
    /// as the provider opens cow:BASE,OVERLAY,format=bitmap; a hydrated (standalone) one needs no base
    /// and is opened alone.
    /// </summary>
    public override IBlockDevice OpenForIo(string path, bool readOnly, IDiskProvider provider, Func<string, bool, IBlockDevice> openStorage, string? policy = null)
    {
        BitmapHeader header;
        using (IBlockDevice probe = openStorage(path, true))
        {
            header = BitmapOverlay.ReadHeader(probe);
        }
        if (header.IsStandalone)
        {
            IBlockDevice cow = openStorage(path, readOnly);
            try
            {
                return BitmapOverlay.Open(cow, null, new BitmapOverlayOptions { ReadOnly = readOnly, OwnsDevices = true });
            }
            catch
            {
                cow.Dispose();
                throw;
            }
        }
        if (!OverlayAttachment.IsLun(header.BaseName) && (header.BaseName.Length == 0 || !Path.IsPathFullyQualified(header.BaseName)))
        {
            throw new StorageException($"The bitmap overlay '{path}' records no absolute base path (\"{header.BaseName}\"), so its base cannot be found.");
        }
        return provider.Open(new DiskSpecification($"cow:{header.BaseName},{path},format=bitmap" + (policy != null ? ",policy=" + policy : ""), readOnly));
    }

    /// <summary>
    /// A bitmap overlay records its base by absolute path only (docs/BITMAP-FORMAT.md, base name), which
    /// resolves to itself; a name given when one is made is relative to the new overlay's directory, as QEMU resolves backing names.
    /// </summary>
    public override string ResolveBasePath(string imagePath, string baseName) => OverlayAttachment.IsLun(baseName) || OverlayAttachment.IsLun(imagePath)
        ? FullName(baseName)
        : Path.GetFullPath(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(imagePath)) ?? "/", baseName));

    /// <summary>A base as named in messages and compared: a LUN's canonical URL, or a file's full path.</summary>
    private static string FullName(string name) => OverlayAttachment.IsLun(name) ? IscsiUrl.Parse(name).ToString() : Path.GetFullPath(name);

    public override OverlayOperationResult? Refuses(OverlayFileOperation operation, string imagePath) => operation switch
    {
        OverlayFileOperation.Resize => OverlayOperationResult.Unsupported($"'{imagePath}' is a bitmap overlay, whose size is its base's; resize the base and make a new overlay"),
        OverlayFileOperation.Snapshot => OverlayOperationResult.Unsupported($"'{imagePath}' is a bitmap image; snapshots stack qcow2 overlays on qcow2 images"),
        OverlayFileOperation.Rebase => OverlayOperationResult.Unsupported($"'{imagePath}' is a bitmap image; rebase changes the backing file of qcow2 images"),
        OverlayFileOperation.Measure => OverlayOperationResult.Unsupported("cannot measure for the format 'bitmap' (use raw or qcow2)"),
        OverlayFileOperation.Bitmaps => OverlayOperationResult.Unsupported($"'{imagePath}' is not a qcow2 image; only qcow2 images hold persistent bitmaps"),
        OverlayFileOperation.Amend => OverlayOperationResult.Unsupported($"'{imagePath}' is not a qcow2 image; amend changes qcow2 images"),
        _ => null,
    };

    public override OverlayOperationResult Resize(string imagePath, Func<long, long?> newSize, OverlayFileOptions? files = null) =>
        Refuses(OverlayFileOperation.Resize, imagePath)!;

    public override OverlayOperationResult Snapshot(string imagePath, string newOverlayPath) =>
        Refuses(OverlayFileOperation.Snapshot, imagePath)!;

    public override OverlayOperationResult Rebase(string imagePath, OverlayRebaseOptions options, OverlayFileOptions? files = null, CancellationToken cancellationToken = default) =>
        Refuses(OverlayFileOperation.Rebase, imagePath)!;

    /// <summary>A bitmap overlay's size follows its base, not its contents: there is nothing to estimate.</summary>
    public override OverlaySizeEstimate Measure(long virtualSize, long dataBytes) =>
        throw new InvalidOperationException(Refuses(OverlayFileOperation.Measure, "")!.Error);

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
}
