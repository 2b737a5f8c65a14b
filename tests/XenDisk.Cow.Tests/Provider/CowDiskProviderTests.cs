using System.Security.Cryptography;
using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Overlays;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Provider;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Operations.Support;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Provider;

/// <summary>The provider against real files: shared bases stay untouched, overlays are private and persistent, refusals explain themselves.</summary>
[Trait(Needs.Key, Needs.Qemu)]
public sealed class CowDiskProviderTests : IDisposable
{
    private const int BaseSize = 2 << 20;

    private readonly TempDirectory _directory = new();
    private readonly string _bases;
    private readonly string _overlays;
    private readonly byte[] _baseContents = TestData.Random(BaseSize, 42);
    private readonly string _basePath;
    private readonly CowDiskProvider _provider;

    public CowDiskProviderTests()
    {
        _bases = Directory.CreateDirectory(_directory.File("bases")).FullName;
        _overlays = Directory.CreateDirectory(_directory.File("overlays")).FullName;
        _basePath = Path.Combine(_bases, "base.raw");
        File.WriteAllBytes(_basePath, _baseContents);
        _provider = new CowDiskProvider(new CowProviderOptions { AllowedBaseDirectories = [_bases] });
    }

    public void Dispose() => _directory.Dispose();

    private IBlockDevice Open(string target, bool readOnly = false) => _provider.Open(new DiskSpecification(target, readOnly));

    private StorageException Refused(string target, bool readOnly = false) => Assert.Throws<StorageException>(() => Open(target, readOnly).Dispose());

    private string Overlay(string name) => Path.Combine(_overlays, name);

    private static byte[] Hash(string path) => SHA256.HashData(File.ReadAllBytes(path));

    [Theory]
    [InlineData("qcow2")]
    [InlineData("bitmap")]
    public void Two_overlays_over_one_base_see_only_their_own_writes_and_the_base_never_changes(string format)
    {
        byte[] before = Hash(_basePath);
        byte[] first = TestData.Random(8192, 1);
        byte[] second = TestData.Random(8192, 2);
        using (IBlockDevice a = Open($"cow:{_basePath},{Overlay("a")},format={format}"))
        using (IBlockDevice b = Open($"cow:{_basePath},{Overlay("b")},format={format}"))
        {
            Assert.Equal(BaseSize, a.Info.SizeBytes);
            Assert.Equal(IoStatus.Ok, a.WriteAt(65536, first));
            Assert.Equal(IoStatus.Ok, b.WriteAt(65536, second));
            Assert.Equal(IoStatus.Ok, b.WriteAt(0, second));
            Assert.Equal(IoStatus.Ok, a.Flush());
            Assert.Equal(IoStatus.Ok, b.Flush());

            byte[] expectedA = (byte[])_baseContents.Clone();
            first.CopyTo(expectedA, 65536);
            byte[] expectedB = (byte[])_baseContents.Clone();
            second.CopyTo(expectedB, 65536);
            second.CopyTo(expectedB, 0);
            ImageFiles.AssertContents(expectedA, TestData.ReadAll(a));
            ImageFiles.AssertContents(expectedB, TestData.ReadAll(b));
        }
        Assert.Equal(before, Hash(_basePath));
    }

    [Theory]
    [InlineData("qcow2", "sync")]
    [InlineData("qcow2", "lazy")]
    [InlineData("bitmap", "flush")]
    public void An_existing_overlay_is_reopened_with_its_data(string format, string policy)
    {
        string target = $"cow:{_basePath},{Overlay("guest")},format={format},policy={policy}";
        byte[] data = TestData.Random(12288, 5);
        using (IBlockDevice device = Open(target))
        {
            Assert.Equal(IoStatus.Ok, device.WriteAt(4096, data));
        }
        byte[] expected = (byte[])_baseContents.Clone();
        data.CopyTo(expected, 4096);
        using (IBlockDevice device = Open(target))
        {
            ImageFiles.AssertContents(expected, TestData.ReadAll(device));
        }
        if (format == "qcow2")
        {
            ImageFiles.AssertQemuCheckClean(Overlay("guest"));
            Assert.Equal(_basePath, ImageFiles.Header(Overlay("guest")).BackingFile);
        }
    }

    [Theory]
    [InlineData("qcow2")]
    [InlineData("bitmap")]
    public void Read_only_mode_reads_but_refuses_writes(string format)
    {
        string target = $"cow:{_basePath},{Overlay("guest")},format={format}";
        StorageException missing = Refused(target, readOnly: true);
        Assert.Contains("does not exist", missing.Message);
        Assert.False(File.Exists(Overlay("guest")));

        byte[] data = TestData.Random(4096, 6);
        using (IBlockDevice device = Open(target))
        {
            Assert.Equal(IoStatus.Ok, device.WriteAt(0, data));
        }
        byte[] overlayBefore = Hash(Overlay("guest"));
        using (IBlockDevice device = Open(target, readOnly: true))
        {
            Assert.True(device.Info.ReadOnly);
            Assert.Equal(IoStatus.ReadOnly, device.WriteAt(8192, data));
            byte[] read = new byte[4096];
            Assert.Equal(IoStatus.Ok, device.ReadAt(0, read));
            Assert.Equal(data, read);
        }
        Assert.Equal(overlayBefore, Hash(Overlay("guest")));
    }

    [Theory]
    [InlineData("qcow2")]
    [InlineData("bitmap")]
    public void A_transient_overlay_is_gone_after_dispose_and_starts_from_the_base_each_time(string format)
    {
        string target = $"cow:{_basePath},{Overlay("scratch")},format={format},policy=transient";
        using (IBlockDevice device = Open(target))
        {
            Assert.True(File.Exists(Overlay("scratch")));
            Assert.Equal(IoStatus.Ok, device.WriteAt(0, TestData.Random(4096, 7)));
            Assert.Equal(IoStatus.Ok, device.Flush());
        }
        Assert.False(File.Exists(Overlay("scratch")));
        using (IBlockDevice device = Open(target))
        {
            ImageFiles.AssertContents(_baseContents, TestData.ReadAll(device));
        }
        Assert.False(File.Exists(Overlay("scratch")));
    }

    [Fact]
    public void Raw_targets_and_bare_paths_open_the_file()
    {
        using (IBlockDevice device = Open($"raw:{_basePath}", readOnly: true))
        {
            ImageFiles.AssertContents(_baseContents, TestData.ReadAll(device));
        }
        using (IBlockDevice device = Open(_basePath, readOnly: true))
        {
            Assert.True(device.Info.ReadOnly);
            ImageFiles.AssertContents(_baseContents, TestData.ReadAll(device));
        }
        Assert.Contains("does not exist", Refused($"raw:{_bases}/missing.raw").Message);
    }

    [Fact]
    public void Qcow2_targets_follow_backing_files_only_under_allowed_directories()
    {
        string inside = Overlay("inside.qcow2");
        Qcow2Disk.Create(inside, new Qcow2CreateOptions { VirtualSize = BaseSize, BackingFile = _basePath, BackingFormat = "raw" });
        using (IBlockDevice device = Open($"qcow2:{inside}"))
        {
            ImageFiles.AssertContents(_baseContents, TestData.ReadAll(device));
        }

        string elsewhere = _directory.File("elsewhere.raw");
        File.WriteAllBytes(elsewhere, new byte[BaseSize]);
        string outside = Overlay("outside.qcow2");
        Qcow2Disk.Create(outside, new Qcow2CreateOptions { VirtualSize = BaseSize, BackingFile = "../elsewhere.raw", BackingFormat = "raw" });
        StorageException e = Refused($"qcow2:{outside}");
        Assert.Contains(elsewhere, e.Message);
        Assert.Contains("not under an allowed base directory", e.Message);
        Assert.Contains("AllowedBaseDirectories", e.Message);

        // A symbolic link inside an allowed directory does not lead outside it.
        File.CreateSymbolicLink(Path.Combine(_bases, "link.raw"), elsewhere);
        string linked = Overlay("linked.qcow2");
        Qcow2Disk.Create(linked, new Qcow2CreateOptions { VirtualSize = BaseSize, BackingFile = Path.Combine(_bases, "link.raw"), BackingFormat = "raw" });
        Assert.Contains("not under an allowed base directory", Refused($"qcow2:{linked}").Message);

        Assert.Contains("policy=transient", Refused($"qcow2:{inside},policy=transient").Message);
        Assert.True(File.Exists(inside));
    }

    [Fact]
    public void Refusals_name_the_problem()
    {
        Assert.Contains("Base image " + Path.Combine(_bases, "missing.raw") + " does not exist", Refused($"cow:{_bases}/missing.raw,{Overlay("o")}").Message);
        Assert.False(File.Exists(Overlay("o")));

        string stranger = _directory.File("stranger.raw");
        File.WriteAllBytes(stranger, new byte[BaseSize]);
        Assert.Contains("not under an allowed base directory", Refused($"cow:{stranger},{Overlay("o")}").Message);

        Assert.Contains("same file", Refused($"cow:{_basePath},{_basePath}").Message);
        Assert.Contains("cluster= applies to qcow2", Refused($"cow:{_basePath},{Overlay("o")},format=bitmap,cluster=64k").Message);
        Assert.Contains("grain= applies to bitmap", Refused($"cow:{_basePath},{Overlay("o")},grain=4k").Message);
        Assert.Contains("transient needs a writable disk", Refused($"cow:{_basePath},{Overlay("o")},policy=transient", readOnly: true).Message);

        // An overlay made for another base.
        string otherBase = Path.Combine(_bases, "other.raw");
        File.WriteAllBytes(otherBase, new byte[BaseSize]);
        using (Open($"cow:{otherBase},{Overlay("theirs.qcow2")}"))
        {
        }
        StorageException mismatch = Refused($"cow:{_basePath},{Overlay("theirs.qcow2")}");
        Assert.Contains("records the backing file", mismatch.Message);
        Assert.Contains(otherBase, mismatch.Message);

        using (Open($"cow:{otherBase},{Overlay("theirs.bitmap")},format=bitmap"))
        {
        }
        Assert.Contains("was made over the base", Refused($"cow:{_basePath},{Overlay("theirs.bitmap")},format=bitmap").Message);

        // Size mismatch between an existing overlay and its base.
        Qcow2Disk.Create(Overlay("small.qcow2"), new Qcow2CreateOptions { VirtualSize = BaseSize / 2, BackingFile = _basePath, BackingFormat = "raw" });
        Assert.Contains("must have the same size", Refused($"cow:{_basePath},{Overlay("small.qcow2")}").Message);

        // The base format is never probed: a raw base named as qcow2 is refused as not being qcow2.
        Assert.Contains("as qcow2: qcow2 image refused: bad magic", Refused($"cow:{_basePath},{Overlay("o")},base-format=qcow2").Message);
        Qcow2Disk.Create(Overlay("wrong-format.qcow2"), new Qcow2CreateOptions { VirtualSize = BaseSize, BackingFile = _basePath, BackingFormat = "qcow2" });
        Assert.Contains("records the backing format 'qcow2', but the target says base-format=raw", Refused($"cow:{_basePath},{Overlay("wrong-format.qcow2")}").Message);

        // Corrupt or foreign overlays.
        File.WriteAllBytes(Overlay("garbage.qcow2"), TestData.Random(65536, 9));
        Assert.Contains("not a usable qcow2 image", Refused($"cow:{_basePath},{Overlay("garbage.qcow2")}").Message);
        File.WriteAllBytes(Overlay("garbage.bitmap"), TestData.Random(1 << 20, 9));
        Assert.Contains("neither blank nor a bitmap overlay", Refused($"cow:{_basePath},{Overlay("garbage.bitmap")},format=bitmap").Message);
        Assert.Equal(1 << 20, new FileInfo(Overlay("garbage.bitmap")).Length);

        // An empty base.
        string empty = Path.Combine(_bases, "empty.raw");
        File.WriteAllBytes(empty, []);
        Assert.Contains("non-empty", Refused($"cow:{empty},{Overlay("o")}").Message);
        Assert.False(File.Exists(Overlay("o")));
    }

    [Fact]
    public void A_corrupt_marked_overlay_is_refused_for_writing_but_opens_read_only()
    {
        string target = $"cow:{_basePath},{Overlay("guest.qcow2")}";
        using (Open(target))
        {
        }
        // Set the corrupt bit (incompatible feature bit 1, byte 79 of the header).
        using (FileStream stream = new(Overlay("guest.qcow2"), FileMode.Open))
        {
            stream.Position = 79;
            stream.WriteByte(2);
        }
        StorageException e = Refused(target);
        Assert.Contains("corrupt", e.Message);
        using IBlockDevice device = Open(target, readOnly: true);
        ImageFiles.AssertContents(_baseContents, TestData.ReadAll(device));
    }

    [Fact]
    public void A_hydrated_overlay_opens_without_its_base()
    {
        string overlay = Overlay("guest.qcow2");
        string target = $"cow:{_basePath},{overlay}";
        byte[] expected = (byte[])_baseContents.Clone();
        using (IBlockDevice device = Open(target))
        {
            byte[] data = TestData.Random(4096, 3);
            Assert.Equal(IoStatus.Ok, device.WriteAt(0, data));
            data.CopyTo(expected, 0);
            OverlayOperationResult result = ((Qcow2Image)device).Hydrate();
            Assert.True(result.Succeeded, result.Error);
        }
        Assert.Null(ImageFiles.Header(overlay).BackingFile);
        using (IBlockDevice device = Open(target))
        {
            ImageFiles.AssertContents(expected, TestData.ReadAll(device));
        }
    }

    [Fact]
    public void A_qcow2_base_is_opened_read_only_with_its_chain_under_the_policy()
    {
        string qcow2Base = Path.Combine(_bases, "golden.qcow2");
        Qcow2Disk.Create(qcow2Base, new Qcow2CreateOptions { VirtualSize = BaseSize, BackingFile = "base.raw", BackingFormat = "raw" });
        byte[] before = Hash(qcow2Base);
        byte[] data = TestData.Random(4096, 4);
        string target = $"cow:{qcow2Base},{Overlay("guest")},base-format=qcow2";
        using (IBlockDevice device = Open(target))
        {
            Assert.Equal(IoStatus.Ok, device.WriteAt(8192, data));
        }
        byte[] expected = (byte[])_baseContents.Clone();
        data.CopyTo(expected, 8192);
        using (IBlockDevice device = Open(target))
        {
            ImageFiles.AssertContents(expected, TestData.ReadAll(device));
        }
        Assert.Equal(before, Hash(qcow2Base));
        Assert.Equal("qcow2", ImageFiles.Header(Overlay("guest")).BackingFormat);
    }

    [Fact]
    public void Many_devices_open_concurrently_over_one_base()
    {
        byte[] before = Hash(_basePath);
        IBlockDevice[] devices = new IBlockDevice[8];
        Parallel.For(0, devices.Length, new ParallelOptions { MaxDegreeOfParallelism = 4 }, i =>
        {
            devices[i] = Open($"cow:{_basePath},{Overlay($"g{i}")},format={(i % 2 == 0 ? "qcow2" : "bitmap")}");
            byte[] data = TestData.Random(4096, 100 + i);
            Assert.Equal(IoStatus.Ok, devices[i].WriteAt(0, data));
        });
        for (int i = 0; i < devices.Length; i++)
        {
            byte[] read = new byte[4096];
            Assert.Equal(IoStatus.Ok, devices[i].ReadAt(0, read));
            Assert.Equal(TestData.Random(4096, 100 + i), read);
            Assert.IsType(i % 2 == 0 ? typeof(Qcow2Image) : typeof(BitmapOverlay), devices[i]);
            devices[i].Dispose();
        }
        Assert.Equal(before, Hash(_basePath));
    }

    [Fact]
    public void Defaults_come_from_the_options()
    {
        CowDiskProvider provider = new(new CowProviderOptions
        {
            DefaultOverlayFormat = OverlayFormat.Bitmap,
            DefaultPolicy = MetadataPolicy.Sync,
            DefaultGrainSize = 16384,
        });
        using IBlockDevice device = provider.Open(new DiskSpecification($"cow:{_basePath},{Overlay("d")}", ReadOnly: false));
        BitmapOverlay overlay = Assert.IsType<BitmapOverlay>(device);
        Assert.Equal(16384, overlay.GrainSize);
        Assert.Equal(MetadataPolicy.Sync, overlay.Policy);
    }

    [Theory]
    [InlineData("qcow2")]
    [InlineData("bitmap")]
    public void A_hydrated_overlay_serves_its_disk_after_the_base_is_retired_but_an_unhydrated_one_is_refused(string format)
    {
        string target = $"cow:{_basePath},{Overlay("guest")},format={format}";
        string unhydratedTarget = $"cow:{_basePath},{Overlay("other")},format={format}";
        byte[] data = TestData.Random(8192, 9);
        byte[] expected = (byte[])_baseContents.Clone();
        data.CopyTo(expected, 4096);
        using (IBlockDevice device = Open(target))
        {
            Assert.Equal(IoStatus.Ok, device.WriteAt(4096, data));
            Assert.Equal(IoStatus.Ok, device switch
            {
                Qcow2Image image => image.Hydrate().Succeeded ? IoStatus.Ok : IoStatus.IoError,
                BitmapOverlay overlay => overlay.Hydrate(),
                _ => throw new InvalidOperationException($"unexpected device {device.GetType().Name}"),
            });
        }
        Open(unhydratedTarget).Dispose();

        File.Move(_basePath, _basePath + ".retired");
        using (IBlockDevice device = Open(target))
        {
            ImageFiles.AssertContents(expected, TestData.ReadAll(device));
            Assert.Equal(IoStatus.Ok, device.WriteAt(0, data));
        }
        Assert.Contains("does not exist", Refused(unhydratedTarget).Message);
        Assert.Contains("does not exist", Refused($"cow:{_basePath},{Overlay("never-made")},format={format}").Message);
        Assert.False(File.Exists(Overlay("never-made")));
    }
}
