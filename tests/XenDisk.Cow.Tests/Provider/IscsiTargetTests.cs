using XenDisk.Cow.Provider;
using XenDisk.Storage;
using XenDisk.Storage.Iscsi;
using XenDisk.TestSupport.Iscsi;

namespace XenDisk.Cow.Tests.Provider;

/// <summary>iSCSI LUNs in disk targets, against a real tgtd: a plain disk, a golden base, a bitmap overlay device.</summary>
[Trait(Needs.Key, Needs.Tgtd)]
public sealed class IscsiTargetTests : IDisposable
{
    private const string Iqn = "iqn.2026-12.org.xendisk.test:san";
    private const long Size = 32L << 20;

    private readonly TempDirectory _work = new("xendisk-cow-iscsi-");
    private TgtdTarget? _target;

    public void Dispose()
    {
        _target?.Dispose();
        _work.Dispose();
    }

    [Theory]
    [InlineData("raw:iscsi://127.0.0.1:3260/iqn.2026-12.x:y/1", CowTargetKind.Raw)]
    [InlineData("iscsi://127.0.0.1/iqn.2026-12.x:y/1", CowTargetKind.Raw)]
    [InlineData("cow:iscsi://h/iqn.2026-12.x:y/1,/var/lib/xendisk/vm1.qcow2", CowTargetKind.Cow)]
    [InlineData("cow:iscsi://h/iqn.2026-12.x:y/1,iscsi://h/iqn.2026-12.x:y/2,format=bitmap", CowTargetKind.Cow)]
    public void Urls_stand_where_paths_do(string text, CowTargetKind kind)
    {
        CowTarget target = CowTarget.Parse(text);
        Assert.Equal(kind, target.Kind);
        string?[] paths = [target.Path, target.BasePath, target.OverlayPath];
        Assert.Contains(paths, p => p != null && p.StartsWith("iscsi://", StringComparison.Ordinal));
        Assert.All(paths.Where(p => p != null && p.StartsWith("iscsi://", StringComparison.Ordinal)), p => Assert.Contains(":3260/", p, StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("raw:iscsi://h/iqn.2026-12.x:y", "the LUN is missing")]
    [InlineData("cow:iscsi://h:99999/iqn.2026-12.x:y/1,/o.qcow2", "the port \"99999\"")]
    [InlineData("cow:/base.img,iscsi://u%secret-pw@h/iqn.2026-12.x:y/1,format=bitmap", "credentials in the URL")]
    public void A_bad_url_in_a_target_is_refused_naming_the_part(string text, string expected)
    {
        StorageException e = Assert.Throws<StorageException>(() => CowTarget.Parse(text));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("secret-pw", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Without_iscsi_enabled_a_lun_is_refused_with_the_reason()
    {
        CowDiskProvider provider = new(new CowProviderOptions());
        StorageException e = Assert.Throws<StorageException>(() => provider.Open(new DiskSpecification("raw:iscsi://127.0.0.1/iqn.2026-12.x:y/1", ReadOnly: true)));
        Assert.Contains("iSCSI is not enabled", e.Message, StringComparison.Ordinal);
    }

    [TgtdFact]
    public void A_qcow2_overlay_in_a_file_over_a_golden_lun_keeps_the_golden_lun_unchanged()
    {
        (string golden, byte[] goldenBytes) = StartWithGolden(secondLun: false);
        string overlay = Path.Combine(_work.Path, "vm1.qcow2");
        CowDiskProvider provider = Provider();
        byte[] written = Pattern(64 << 10, 2);
        using (IBlockDevice disk = provider.Open(new DiskSpecification($"cow:{golden},{overlay}", ReadOnly: false)))
        {
            Assert.Equal(Size, disk.Info.SizeBytes);
            AssertReads(disk, 0, goldenBytes.AsSpan(0, 1 << 20));
            Assert.Equal(IoStatus.Ok, disk.WriteAt(1 << 20, written));
            Assert.Equal(IoStatus.Ok, disk.Flush());
            AssertReads(disk, 1 << 20, written);
        }
        // Reopened: the overlay records the LUN as its backing file, in QEMU's URL form.
        using (IBlockDevice disk = provider.Open(new DiskSpecification($"cow:{golden},{overlay}", ReadOnly: true)))
        {
            AssertReads(disk, 1 << 20, written);
            AssertReads(disk, 2 << 20, goldenBytes.AsSpan(2 << 20, 1 << 20));
        }
        // As qcow2:PATH the backing LUN comes from the header.
        using (IBlockDevice disk = provider.Open(new DiskSpecification($"qcow2:{overlay}", ReadOnly: true)))
        {
            AssertReads(disk, 1 << 20, written);
            AssertReads(disk, 0, goldenBytes.AsSpan(0, 1 << 20));
        }
        Assert.Equal(goldenBytes, File.ReadAllBytes(LunFile(1)));
    }

    [TgtdFact]
    public void A_bitmap_overlay_on_one_lun_over_a_golden_image_on_another()
    {
        (string golden, byte[] goldenBytes) = StartWithGolden(secondLun: true);
        string overlayLun = _target!.Url(Iqn, 2);
        CowDiskProvider provider = Provider();
        string description = $"cow:{golden},{overlayLun},format=bitmap";
        byte[] written = Pattern(12 << 10, 3);
        using (IBlockDevice disk = provider.Open(new DiskSpecification(description, ReadOnly: false)))
        {
            Assert.Equal(Size, disk.Info.SizeBytes);
            AssertReads(disk, 4 << 20, goldenBytes.AsSpan(4 << 20, 1 << 20));
            Assert.Equal(IoStatus.Ok, disk.WriteAt((4 << 20) + 4096, written));
            Assert.Equal(IoStatus.Ok, disk.Flush());
        }
        using (IBlockDevice disk = provider.Open(new DiskSpecification(description, ReadOnly: false)))
        {
            byte[] expected = goldenBytes.AsSpan(4 << 20, 1 << 20).ToArray();
            written.CopyTo(expected, 4096);
            AssertReads(disk, 4 << 20, expected);
        }
        Assert.Equal(goldenBytes, File.ReadAllBytes(LunFile(1)));
        // The overlay LUN now holds a bitmap overlay (its magic at the start), not the golden data.
        Assert.NotEqual(new byte[16], File.ReadAllBytes(LunFile(2)).AsSpan(0, 16).ToArray());
    }

    [TgtdFact]
    public void A_qcow2_overlay_on_a_lun_is_refused_with_the_alternative()
    {
        (string golden, _) = StartWithGolden(secondLun: true);
        StorageException e = Assert.Throws<StorageException>(() => Provider().Open(new DiskSpecification($"cow:{golden},{_target!.Url(Iqn, 2)},format=qcow2", ReadOnly: false)));
        Assert.Contains("use format=bitmap", e.Message, StringComparison.Ordinal);
    }

    private CowDiskProvider Provider() => new(new CowProviderOptions
    {
        AllowedBaseDirectories = [_work.Path],
        RawProvider = new RawDiskProvider(new RawDiskProviderOptions { Iscsi = new IscsiOptions() }),
    });

    private string LunFile(int lun) => Path.Combine(_work.Path, $"lun{lun}.img");

    private (string GoldenUrl, byte[] GoldenBytes) StartWithGolden(bool secondLun)
    {
        byte[] golden = Pattern((int)Size, 1);
        File.WriteAllBytes(LunFile(1), golden);
        List<TgtdLun> luns = [new TgtdLun(1, LunFile(1))];
        if (secondLun)
        {
            using (FileStream file = File.Create(LunFile(2)))
            {
                // A bitmap overlay device holds its header and map before the data area (docs/BITMAP-FORMAT.md).
                file.SetLength(Size + (2 << 20));
            }
            luns.Add(new TgtdLun(2, LunFile(2)));
        }
        _target = TgtdTarget.Start(Path.Combine(_work.Path, "tgtd"), new TgtdTargetDefinition(Iqn, luns));
        return (_target.Url(Iqn, 1), golden);
    }

    private static void AssertReads(IBlockDevice disk, long offset, ReadOnlySpan<byte> expected)
    {
        byte[] back = new byte[expected.Length];
        Assert.Equal(IoStatus.Ok, disk.ReadAt(offset, back));
        Assert.True(expected.SequenceEqual(back), $"{expected.Length} bytes at {offset} differ");
    }

    private static byte[] Pattern(int length, int seed)
    {
        byte[] data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }
}
