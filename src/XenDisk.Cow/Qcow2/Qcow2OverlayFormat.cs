using XenDisk.Cow.Overlays;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>qcow2 as an <see cref="OverlayFormat"/>: the file-level operations on the qcow2 engine.</summary>
internal sealed partial class Qcow2OverlayFormat : OverlayFormat
{
    public static readonly Qcow2OverlayFormat Instance = new();

    // qcow2 spec, == Header ==: magic "QFI\xfb".
    private static ReadOnlySpan<byte> Magic => [(byte)'Q', (byte)'F', (byte)'I', 0xfb];

    private Qcow2OverlayFormat()
    {
    }

    public override string Name => "qcow2";

    public override string UnitOptionName => "cluster";

    public override bool Recognises(ReadOnlySpan<byte> firstBytes) => firstBytes.StartsWith(Magic);

    /// <summary>
    /// The engine repairs by rebuilding the refcounts from the references, which fixes refcount
    /// corruptions too; so <see cref="OverlayRepair.Leaks"/> repairs only an image whose sole findings
    /// are leaks (as qemu-img check -r leaks leaves corruptions alone), and reports any other untouched.
    /// </summary>
    public override OverlayCheckReport Check(IBlockDevice image, OverlayRepair repair, Action<long, long>? progress = null)
    {
        // A header that cannot be read is "could not check", not a corruption count.
        Qcow2Disk.ReadHeader(image);
        if (repair != OverlayRepair.Leaks)
        {
            return ToReport(Qcow2Checker.Check(image, repair == OverlayRepair.All, progress), repair == OverlayRepair.All);
        }
        OverlayCheckReport found = ToReport(Qcow2Checker.Check(image, repair: false, progress), repaired: false);
        if (found.Leaks == 0)
        {
            return found;
        }
        if (found.Corruptions > 0)
        {
            return found with { Messages = [.. found.Messages, "Not repaired: -r leaks leaves an image with corruptions alone; repair it with -r all"] };
        }
        return ToReport(Qcow2Checker.Check(image, repair: true, progress), repaired: true);
    }

    public override IReadOnlyList<OverlayExtent> Map(IBlockDevice image, Action<long, long>? progress = null)
    {
        // The map is this image's own tables: the backing chain is neither needed nor opened.
        using Qcow2Image opened = Qcow2Image.Open(image, null, new Qcow2OpenOptions { ReadOnly = true, AllowMissingBacking = true, OwnsDevices = false });
        return ((IOverlayImage)opened).Map(progress);
    }

    public override OverlayBase? RecordedBase(IBlockDevice image, string imagePath)
    {
        string? name = Qcow2Disk.ReadHeader(image).BackingFile;
        return name == null ? null : new OverlayBase(name, Qcow2Disk.ResolveBackingPath(imagePath, name), NeededForReads: true);
    }

    public override OverlayOperationResult Hydrate(string imagePath, OverlayHydrateOptions? options = null, OverlayFileOptions? files = null, CancellationToken cancellationToken = default) =>
        Qcow2Operations.Hydrate(imagePath, Qcow2Image.ToQcow2(options), ToQcow2(files), cancellationToken);

    public override OverlayOperationResult Commit(string imagePath, OverlayCommitOptions? options = null, OverlayFileOptions? files = null, CancellationToken cancellationToken = default) =>
        Qcow2Operations.Commit(imagePath, Qcow2Image.ToQcow2(options), ToQcow2(files), cancellationToken);

    private static Qcow2FileOptions? ToQcow2(OverlayFileOptions? files) =>
        files == null ? null : new Qcow2FileOptions { BackingPolicy = files.BackingPolicy, Policy = files.Policy };

    private static OverlayCheckReport ToReport(Qcow2CheckReport report, bool repaired) => new()
    {
        Corruptions = report.Corruptions,
        Leaks = report.Leaks,
        CorruptionsFixed = report.CorruptionsFixed,
        LeaksFixed = report.LeaksFixed,
        Messages = report.Messages,
        ImageEndOffset = report.ImageEndOffset,
        Repaired = repaired && (report.CorruptionsFixed > 0 || report.LeaksFixed > 0),
    };
}
