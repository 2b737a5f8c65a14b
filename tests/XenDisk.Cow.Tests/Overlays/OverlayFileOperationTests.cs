using System.Security.Cryptography;
using System.Text.Json;
using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Overlays;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Provider;
using XenDisk.Cow.Storage;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Overlays;

/// <summary>
/// The file operations of <see cref="OverlayFormat"/> (describe, resize, snapshot, rebase, measure),
/// run over every overlay format on one footing: a raw base made by qemu-img, a qcow2 overlay made and
/// written by qemu-img and qemu-io, a bitmap overlay made by XenDisk over the same base. Each format
/// either performs an operation (and QEMU reads the result) or refuses it through
/// <see cref="OverlayFormat.Refuses"/> and the operation alike, leaving the file untouched.
/// </summary>
public sealed class OverlayFileOperationTests : IDisposable
{
    private const long BaseSize = 4L << 20;
    private const long Written = 64 * 1024;
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    public static TheoryData<string> Formats => new(OverlayFormat.All.Select(f => f.Name));

    /// <summary>An overlay of <paramref name="format"/> over base.raw, with <see cref="Written"/> bytes of 0x5a at 1 MiB.</summary>
    private string MakeOverlay(string format)
    {
        string basePath = _dir.File("base.raw");
        QemuTools.RunOk(QemuTools.QemuImg, "create", "-q", "-f", "raw", basePath, BaseSize.ToString(System.Globalization.CultureInfo.InvariantCulture));
        QemuTools.RunOk(QemuTools.QemuIo, "-f", "raw", "-c", "write -P 0x11 0 4M", basePath);
        string overlay = _dir.File("overlay." + format);
        if (format == "qcow2")
        {
            QemuTools.RunOk(QemuTools.QemuImg, "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", overlay);
            QemuTools.RunOk(QemuTools.QemuIo, "-f", "qcow2", "-c", "write -P 0x5a 1M 64k", overlay);
            return overlay;
        }
        OverlayFiles.CreateBitmapFile(overlay, BitmapOverlay.RequiredCowSize(BaseSize), FilePreallocation.Falloc);
        using BitmapOverlay created = BitmapOverlay.Create(RawBlockDevice.Open(overlay, readOnly: false), RawBlockDevice.Open(basePath, readOnly: true),
            new BitmapCreateOptions { BaseName = basePath }, new BitmapOverlayOptions { OwnsDevices = true });
        byte[] data = new byte[Written];
        Array.Fill(data, (byte)0x5a);
        Assert.Equal(IoStatus.Ok, created.WriteAt(1 << 20, data));
        Assert.Equal(IoStatus.Ok, created.Close());
        return overlay;
    }

    private static OverlayDescription Describe(OverlayFormat format, string path)
    {
        using FileImageDevice device = FileImageDevice.Open(path, readOnly: true);
        return format.Describe(device, path);
    }

    /// <summary>The test directory's bases may be followed (images are untrusted: nothing is by default).</summary>
    private OverlayFileOptions Files => new() { BackingPolicy = BackingFilePolicy.InDirectories(_dir.Path) };

    private static byte[] Hash(string path) => SHA256.HashData(File.ReadAllBytes(path));

    [Theory]
    [MemberData(nameof(Formats))]
    public void Describe_ReportsTheSizeTheBaseAndTheDataWritten(string name)
    {
        OverlayFormat format = OverlayFormat.Find(name)!;
        string overlay = MakeOverlay(name);

        OverlayDescription description = Describe(format, overlay);

        Assert.Equal(BaseSize, description.VirtualSize);
        Assert.Equal(new FileInfo(overlay).Length, description.FileSize);
        Assert.Equal(_dir.File("base.raw"), description.FullBackingFilename);
        Assert.Equal("raw", description.BackingFormat);
        Assert.Equal(Written, description.AllocatedBytes);
        Assert.False(description.Dirty);
        Assert.False(description.Corrupt);
        Assert.NotEmpty(description.Details);
        Assert.Equal(_dir.File("base.raw"), format.ResolveBasePath(overlay, description.BackingFile!));
        if (name == "qcow2")
        {
            using JsonDocument info = JsonDocument.Parse(QemuTools.RunOk(QemuTools.QemuImg, "info", "--output=json", overlay));
            Assert.Equal(info.RootElement.GetProperty("virtual-size").GetInt64(), description.VirtualSize);
            Assert.Equal(info.RootElement.GetProperty("cluster-size").GetInt32(), description.ClusterSize);
            Assert.Equal(info.RootElement.GetProperty("backing-filename").GetString(), description.BackingFile);
        }
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public void Resize_GrowsOrIsRefusedByTheFormat_AndBadSizesChangeNothing(string name)
    {
        OverlayFormat format = OverlayFormat.Find(name)!;
        string overlay = MakeOverlay(name);
        byte[] before = Hash(overlay);

        if (format.Refuses(OverlayFileOperation.Resize, overlay) is { } refusal)
        {
            Assert.Equal(IoStatus.NotSupported, refusal.Status);
            Assert.Contains(overlay, refusal.Error);
            OverlayOperationResult refused = format.Resize(overlay, current => current * 2, Files);
            Assert.Equal(refusal, refused);
            Assert.Equal(before, Hash(overlay));
            return;
        }

        // The caller's refusal (null) leaves the file alone.
        Assert.True(format.Resize(overlay, _ => null, Files).Succeeded);
        Assert.Equal(before, Hash(overlay));

        OverlayOperationResult unaligned = format.Resize(overlay, current => current + 100, Files);
        Assert.Equal(IoStatus.OutOfRange, unaligned.Status);
        Assert.Equal(IoStatus.NotSupported, format.Resize(overlay, current => current / 2, Files).Status);
        Assert.Equal(before, Hash(overlay));

        long seen = 0;
        OverlayOperationResult grown = format.Resize(overlay, current => (seen = current) * 4, Files);
        Assert.True(grown.Succeeded, grown.Error);
        Assert.Equal(BaseSize, seen);
        Assert.Equal(BaseSize * 4, Describe(format, overlay).VirtualSize);
        using JsonDocument info = JsonDocument.Parse(QemuTools.RunOk(QemuTools.QemuImg, "info", "--output=json", overlay));
        Assert.Equal(BaseSize * 4, info.RootElement.GetProperty("virtual-size").GetInt64());
        Assert.Contains("No errors", QemuTools.Run(QemuTools.QemuImg, "check", overlay).Output);
        // The data written before the resize is still there, as QEMU reads it.
        QemuTools.RunOk(QemuTools.QemuIo, "-f", "qcow2", "-c", "read -P 0x5a 1M 64k", "-c", "read -P 0x11 0 64k", overlay);
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public void Snapshot_StacksANewOverlayOrIsRefusedByTheFormat(string name)
    {
        OverlayFormat format = OverlayFormat.Find(name)!;
        string overlay = MakeOverlay(name);
        string top = _dir.File("top.qcow2");
        byte[] before = Hash(overlay);

        if (format.Refuses(OverlayFileOperation.Snapshot, overlay) is { } refusal)
        {
            Assert.Equal(refusal, format.Snapshot(overlay, top));
            Assert.False(File.Exists(top));
            Assert.Equal(before, Hash(overlay));
            return;
        }

        Assert.True(format.Snapshot(overlay, top).Succeeded);
        Assert.Equal(before, Hash(overlay));
        OverlayDescription stacked = Describe(format, top);
        Assert.Equal(overlay, stacked.FullBackingFilename);
        Assert.Equal(BaseSize, stacked.VirtualSize);
        Assert.Equal(0, stacked.AllocatedBytes);
        // QEMU follows the new chain to the data written below it.
        QemuTools.RunOk(QemuTools.QemuIo, "-f", "qcow2", "-r", "-c", "read -P 0x5a 1M 64k", "-c", "read -P 0x11 2M 64k", top);
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public void Rebase_PointsAtANewBaseOrIsRefusedByTheFormat(string name)
    {
        OverlayFormat format = OverlayFormat.Find(name)!;
        string overlay = MakeOverlay(name);
        File.Copy(_dir.File("base.raw"), _dir.File("copy.raw"));
        byte[] before = Hash(overlay);
        var options = new OverlayRebaseOptions { NewBase = "copy.raw", NewBaseFormat = "raw", Unsafe = true };

        if (format.Refuses(OverlayFileOperation.Rebase, overlay) is { } refusal)
        {
            Assert.Equal(refusal, format.Rebase(overlay, options, Files));
            Assert.Equal(before, Hash(overlay));
            return;
        }

        Assert.True(format.Rebase(overlay, options, Files).Succeeded);
        Assert.Equal(_dir.File("copy.raw"), Describe(format, overlay).FullBackingFilename);
        using JsonDocument info = JsonDocument.Parse(QemuTools.RunOk(QemuTools.QemuImg, "info", "--output=json", overlay));
        Assert.Equal("copy.raw", info.RootElement.GetProperty("backing-filename").GetString());
        QemuTools.RunOk(QemuTools.QemuIo, "-f", "qcow2", "-r", "-c", "read -P 0x5a 1M 64k", "-c", "read -P 0x11 2M 64k", overlay);
    }

    [Theory]
    [InlineData(1L << 30, 0L)]
    [InlineData(1L << 30, 64L << 20)]
    [InlineData((10L << 30) + 512, 1L << 30)]
    public void Measure_AgreesWithQemuImgMeasureOrIsRefusedByTheFormat(long virtualSize, long dataBytes)
    {
        foreach (OverlayFormat format in OverlayFormat.All)
        {
            if (format.Refuses(OverlayFileOperation.Measure, "") is { } refusal)
            {
                Assert.Equal(IoStatus.NotSupported, refusal.Status);
                Assert.Throws<InvalidOperationException>(() => format.Measure(virtualSize, dataBytes));
                continue;
            }
            OverlaySizeEstimate estimate = format.Measure(virtualSize, dataBytes);
            string sizeText = virtualSize.ToString(System.Globalization.CultureInfo.InvariantCulture);
            using JsonDocument measured = JsonDocument.Parse(QemuTools.RunOk(QemuTools.QemuImg, "measure", "--output=json", "-O", format.Name, "--size", sizeText));
            Assert.Equal(measured.RootElement.GetProperty("fully-allocated").GetInt64(), estimate.FullyAllocated);
            Assert.Equal(measured.RootElement.GetProperty("required").GetInt64() + dataBytes, estimate.Required);
        }
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public void OpenForIo_ServesTheImageOverItsBase_AndWritesLastAcrossAReopen(string name)
    {
        OverlayFormat format = OverlayFormat.Find(name)!;
        string overlay = MakeOverlay(name);
        byte[] baseBefore = Hash(_dir.File("base.raw"));
        CowDiskProvider provider = new(new CowProviderOptions { AllowedBaseDirectories = [_dir.Path] });
        byte[] written = new byte[8192];
        Array.Fill(written, (byte)0x77);

        using (IBlockDevice device = format.OpenForIo(overlay, readOnly: false, provider, (path, readOnly) => ImageLocks.OpenRaw(path, readOnly)))
        {
            Assert.Equal(BaseSize, device.Info.SizeBytes);
            AssertFilled(device, 1 << 20, (int)Written, 0x5a);
            AssertFilled(device, 0, 4096, 0x11);
            Assert.Equal(IoStatus.Ok, device.WriteAt(3 << 20, written));
            Assert.Equal(IoStatus.Ok, device.Flush());
        }

        Assert.Equal(baseBefore, Hash(_dir.File("base.raw")));
        using (IBlockDevice device = format.OpenForIo(overlay, readOnly: true, provider, (path, readOnly) => ImageLocks.OpenRaw(path, readOnly)))
        {
            Assert.True(device.Info.ReadOnly);
            AssertFilled(device, 3 << 20, written.Length, 0x77);
            AssertFilled(device, 2 << 20, 4096, 0x11);
        }
        if (name == "qcow2")
        {
            QemuTools.RunOk(QemuTools.QemuIo, "-f", "qcow2", "-r", "-c", "read -P 0x77 3M 8k", "-c", "read -P 0x5a 1M 64k", overlay);
            Assert.Contains("No errors", QemuTools.Run(QemuTools.QemuImg, "check", overlay).Output);
        }
    }

    private static void AssertFilled(IBlockDevice device, long offset, int length, byte value)
    {
        byte[] data = new byte[length];
        Assert.Equal(IoStatus.Ok, device.ReadAt(offset, data));
        Assert.Equal(-1, data.AsSpan().IndexOfAnyExcept(value));
    }
}
