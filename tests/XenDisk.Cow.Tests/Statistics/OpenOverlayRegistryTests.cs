using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Provider;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Statistics;

/// <summary>The provider knows which copy-on-write images it handed out are open, and only those.</summary>
public sealed class OpenOverlayRegistryTests : IDisposable
{
    private const int BaseSize = 1 << 20;

    private readonly TempDirectory _directory = new();
    private readonly string _basePath;
    private readonly CowDiskProvider _provider;

    public OpenOverlayRegistryTests()
    {
        _basePath = _directory.File("base.raw");
        File.WriteAllBytes(_basePath, TestData.Random(BaseSize, 1));
        _provider = new CowDiskProvider(new CowProviderOptions { AllowedBaseDirectories = [_directory.Path] });
    }

    public void Dispose() => _directory.Dispose();

    private IBlockDevice Open(string target) => _provider.Open(new DiskSpecification(target, ReadOnly: false));

    [Fact]
    public void Overlays_are_listed_while_open_raw_disks_never_and_disposed_ones_are_forgotten()
    {
        string qcow2 = _directory.File("a.qcow2");
        string bitmap = _directory.File("b.cow");
        string transient = _directory.File("t.cow");
        // A raw disk of its own: the base below is shared read-only, which a writable raw disk on it would not allow (image locks).
        string rawDisk = _directory.File("disk.raw");
        File.WriteAllBytes(rawDisk, TestData.Random(BaseSize, 2));
        using IBlockDevice raw = Open("raw:" + rawDisk);
        IBlockDevice first = Open($"cow:{_basePath},{qcow2},format=qcow2");
        IBlockDevice second = Open($"cow:{_basePath},{bitmap},format=bitmap");
        // A transient bitmap overlay comes wrapped (its file is deleted on close); the overlay inside is what is listed.
        IBlockDevice third = Open($"cow:{_basePath},{transient},format=bitmap,policy=transient");

        IReadOnlyList<ICopyOnWriteImage> open = _provider.GetOpenOverlays();
        Assert.Equal([qcow2, bitmap, transient], open.Select(o => o.ImageName).Order(StringComparer.Ordinal));
        Assert.IsType<Qcow2Image>(Assert.Single(open, o => o.ImageName == qcow2));
        Assert.IsType<BitmapOverlay>(Assert.Single(open, o => o.ImageName == transient));

        Assert.Equal(IoStatus.Ok, first.WriteAt(512, TestData.Random(4096, 2)));
        Assert.True(Assert.Single(open, o => o.ImageName == qcow2).Statistics.CopyUps > 0);

        first.Dispose();
        third.Dispose();
        ICopyOnWriteImage remaining = Assert.Single(_provider.GetOpenOverlays());
        Assert.Equal(bitmap, remaining.ImageName);
        Assert.True(open.Single(o => o.ImageName == qcow2).Statistics.IsClosed);

        second.Dispose();
        Assert.Empty(_provider.GetOpenOverlays());
    }

    [Fact]
    public void A_refused_overlay_is_not_listed()
    {
        string overlay = _directory.File("missing.qcow2");
        Assert.Throws<StorageException>(() => _provider.Open(new DiskSpecification($"cow:{_basePath},{overlay}", ReadOnly: true)));
        Assert.Empty(_provider.GetOpenOverlays());
    }
}
