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
    public void Describe_reports_the_size_the_base_and_the_data_written(string name)
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
    public void Resize_grows_or_is_refused_by_the_format_and_bad_sizes_change_nothing(string name)
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
    public void Snapshot_stacks_a_new_overlay_or_is_refused_by_the_format(string name)
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
    public void Rebase_points_at_a_new_base_or_is_refused_by_the_format(string name)
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
    public void Measure_agrees_with_qemu_img_measure_or_is_refused_by_the_format(long virtualSize, long dataBytes)
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
    public void Open_for_io_serves_the_image_over_its_base_and_writes_last_across_a_reopen(string name)
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

    [Theory]
    [MemberData(nameof(Formats))]
    public void Create_makes_an_overlay_over_a_qemu_base_and_refuses_bad_settings_leaving_nothing(string name)
    {
        OverlayFormat format = OverlayFormat.Find(name)!;
        string basePath = _dir.File("base.raw");
        QemuTools.RunOk(QemuTools.QemuImg, "create", "-q", "-f", "raw", basePath, "4M");
        QemuTools.RunOk(QemuTools.QemuIo, "-f", "raw", "-c", "write -P 0x11 0 4M", basePath);
        Func<string, long?> parseSize = text => long.TryParse(text, out long bytes) ? bytes : null;
        string overlay = _dir.File("new." + name);

        // Every overlay format takes a raw base named with its format.
        Assert.Null(format.BaseRefusal(hasBase: true, "raw"));
        OverlayOperationResult unknown = format.Create(overlay, new OverlayCreateOptions
        {
            VirtualSize = BaseSize, BaseName = basePath, BaseFormat = "raw", BasePath = basePath,
            Settings = new Dictionary<string, string> { ["colour"] = "red" }, ParseSize = parseSize,
        });
        Assert.Equal(IoStatus.OutOfRange, unknown.Status);
        Assert.Contains("'colour'", unknown.Error);
        Assert.False(File.Exists(overlay));

        OverlayOperationResult created = format.Create(overlay, new OverlayCreateOptions
        {
            VirtualSize = BaseSize, BaseName = basePath, BaseFormat = "raw", BasePath = basePath, ParseSize = parseSize,
        });

        Assert.True(created.Succeeded, created.Error);
        OverlayDescription description = Describe(format, overlay);
        Assert.Equal(BaseSize, description.VirtualSize);
        Assert.Equal(basePath, description.FullBackingFilename);
        Assert.Equal(0, description.AllocatedBytes);
        using (IBlockDevice device = format.OpenForIo(overlay, readOnly: true, new CowDiskProvider(new CowProviderOptions { AllowedBaseDirectories = [_dir.Path] }),
            (path, readOnly) => ImageLocks.OpenRaw(path, readOnly)))
        {
            AssertFilled(device, 0, 65536, 0x11);
        }
        if (name == "qcow2")
        {
            Assert.Contains("No errors", QemuTools.Run(QemuTools.QemuImg, "check", overlay).Output);
            QemuTools.RunOk(QemuTools.QemuIo, "-f", "qcow2", "-r", "-c", "read -P 0x11 0 4M", overlay);
        }
    }

    [Theory]
    [InlineData("qcow2", false)]
    [InlineData("qcow2", true)]
    [InlineData("bitmap", false)]
    [InlineData("bitmap", true)]
    public void Conversion_target_holds_what_is_written_plain_or_compressed_or_is_refused_by_the_format(string name, bool compressed)
    {
        OverlayFormat format = OverlayFormat.Find(name)!;
        string target = _dir.File("converted." + name);
        var options = new OverlayConversionOptions { Compressed = compressed, Settings = compressed ? ["compression_type=zstd"] : [] };

        if (format.RefusesConversionTarget(options) is { } refusal)
        {
            Assert.Equal(IoStatus.NotSupported, refusal.Status);
            Assert.ThrowsAny<Exception>(() => format.CreateConversionTarget(target, BaseSize, options).Dispose());
            Assert.False(File.Exists(target));
            return;
        }
        Assert.Equal(IoStatus.OutOfRange, format.RefusesConversionTarget(options with { Settings = ["compression_type=lzo"] })?.Status);

        byte[] unit;
        using (OverlayConversionTarget converted = format.CreateConversionTarget(target, BaseSize, options))
        {
            unit = new byte[converted.CompressionUnit];
            Array.Fill(unit, (byte)0x3c);
            string? error = null;
            IoStatus written = compressed ? converted.WriteCompressed(1 << 20, unit, out error) : converted.Device.WriteAt(1 << 20, unit);
            Assert.True(written == IoStatus.Ok, error);
            Assert.Equal(IoStatus.Ok, converted.Finish());
        }

        Assert.Contains("No errors", QemuTools.Run(QemuTools.QemuImg, "check", target).Output);
        QemuTools.RunOk(QemuTools.QemuIo, "-f", name, "-r", "-c", $"read -P 0x3c 1M {unit.Length}", "-c", "read -P 0 0 1M", target);
        if (compressed)
        {
            using JsonDocument info = JsonDocument.Parse(QemuTools.RunOk(QemuTools.QemuImg, "info", "--output=json", target));
            Assert.Equal("zstd", info.RootElement.GetProperty("format-specific").GetProperty("data").GetProperty("compression-type").GetString());
            using JsonDocument check = JsonDocument.Parse(QemuTools.RunOk(QemuTools.QemuImg, "check", "--output=json", target));
            Assert.Equal(1, check.RootElement.GetProperty("compressed-clusters").GetInt32());
        }
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public void Amend_changes_the_version_of_a_qemu_image_or_is_refused_by_the_format(string name)
    {
        OverlayFormat format = OverlayFormat.Find(name)!;
        string overlay = MakeOverlay(name);
        if (name == "qcow2")
        {
            // A version 2 image, as qemu-img makes it with compat=0.10.
            File.Delete(overlay);
            QemuTools.RunOk(QemuTools.QemuImg, "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", "base.raw", "-F", "raw", overlay);
            QemuTools.RunOk(QemuTools.QemuIo, "-f", "qcow2", "-c", "write -P 0x5a 1M 64k", overlay);
        }
        byte[] before = Hash(overlay);

        if (format.Refuses(OverlayFileOperation.Amend, overlay) is { } refusal)
        {
            Assert.Equal(refusal, format.Amend(overlay, ["compat=1.1"], Files));
            Assert.Equal(before, Hash(overlay));
            return;
        }

        Assert.Equal(IoStatus.OutOfRange, format.Amend(overlay, ["cluster_size=4k"], Files).Status);
        Assert.Equal(IoStatus.OutOfRange, format.Amend(overlay, ["compat=2.0"], Files).Status);
        Assert.Equal(before, Hash(overlay));

        OverlayOperationResult amended = format.Amend(overlay, ["compat=1.1", "lazy_refcounts=on"], Files);

        Assert.True(amended.Succeeded, amended.Error);
        using JsonDocument info = JsonDocument.Parse(QemuTools.RunOk(QemuTools.QemuImg, "info", "--output=json", overlay));
        JsonElement data = info.RootElement.GetProperty("format-specific").GetProperty("data");
        Assert.Equal("1.1", data.GetProperty("compat").GetString());
        Assert.True(data.GetProperty("lazy-refcounts").GetBoolean());
        Assert.Contains("No errors", QemuTools.Run(QemuTools.QemuImg, "check", overlay).Output);
        QemuTools.RunOk(QemuTools.QemuIo, "-f", "qcow2", "-r", "-c", "read -P 0x5a 1M 64k", "-c", "read -P 0x11 0 64k", overlay);
        Assert.True(format.CanBeBase);
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public void Edit_bitmaps_adds_and_merges_qemu_bitmaps_or_is_refused_by_the_format(string name)
    {
        OverlayFormat format = OverlayFormat.Find(name)!;
        string overlay = MakeOverlay(name);
        if (name == "qcow2")
        {
            // A bitmap QEMU keeps: it records the write that follows.
            QemuTools.RunOk(QemuTools.QemuImg, "bitmap", "--add", overlay, "qemu");
            QemuTools.RunOk(QemuTools.QemuIo, "-f", "qcow2", "-c", "write -P 0x66 2M 64k", overlay);
        }
        byte[] before = Hash(overlay);
        var edit = new OverlayBitmapEdit
        {
            Bitmap = "copy",
            Steps = [new(OverlayBitmapOperation.Add, "--add"), new(OverlayBitmapOperation.Disable, "--disable"), new(OverlayBitmapOperation.Merge, "--merge", "qemu")],
        };

        if (format.Refuses(OverlayFileOperation.Bitmaps, overlay) is { } refusal)
        {
            Assert.Equal(refusal, format.EditBitmaps(overlay, edit, Files));
            Assert.Equal(before, Hash(overlay));
            return;
        }

        OverlayOperationResult failed = format.EditBitmaps(overlay, edit with { Bitmap = "other", Steps = [new(OverlayBitmapOperation.Remove, "--remove")] }, Files);
        Assert.False(failed.Succeeded);
        Assert.Contains("--remove 'other'", failed.Error);

        OverlayOperationResult edited = format.EditBitmaps(overlay, edit, Files);

        Assert.True(edited.Succeeded, edited.Error);
        Assert.Contains("No errors", QemuTools.Run(QemuTools.QemuImg, "check", overlay).Output);
        Assert.Equal([(2L << 20, 65536L)], QemuTools.DirtyRanges(overlay, "copy"));
        OverlayDescription description = Describe(format, overlay);
        Assert.Equal(["copy", "qemu"], description.Bitmaps!.Select(b => b.Name).Order());
        Assert.Empty(description.Bitmaps!.Single(b => b.Name == "copy").Flags);
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public void Lock_holder_names_who_holds_the_image_and_breaking_is_refused_while_it_is_held(string name)
    {
        OverlayFormat format = OverlayFormat.Find(name)!;
        string overlay = MakeOverlay(name);
        CowDiskProvider provider = new(new CowProviderOptions { AllowedBaseDirectories = [_dir.Path] });
        Assert.Null(OverlayFormat.LockHolder(overlay, forWriting: true));

        using (IBlockDevice reader = format.OpenForIo(overlay, readOnly: true, provider, (path, readOnly) => ImageLocks.OpenRaw(path, readOnly)))
        {
            // Readers share: another reader may open it, a writer may not.
            Assert.Null(OverlayFormat.LockHolder(overlay, forWriting: false));
            Assert.Contains($"pid {Environment.ProcessId}", OverlayFormat.LockHolder(overlay, forWriting: true));
        }
        using (IBlockDevice writer = format.OpenForIo(overlay, readOnly: false, provider, (path, readOnly) => ImageLocks.OpenRaw(path, readOnly)))
        {
            string? holder = OverlayFormat.LockHolder(overlay, forWriting: false);
            Assert.Contains($"pid {Environment.ProcessId}", holder);
            OverlayOperationResult broken = OverlayFormat.BreakLock(overlay);
            Assert.Equal(IoStatus.NotSupported, broken.Status);
            Assert.Contains($"pid {Environment.ProcessId}", broken.Error);
            // QEMU is kept out by the same locks.
            (int exitCode, string output) = QemuTools.Run(QemuTools.QemuIo, "-f", name == "qcow2" ? "qcow2" : "raw", "-c", "read 0 512", overlay);
            Assert.NotEqual(0, exitCode);
            Assert.Contains("lock", output);
        }

        Assert.Null(OverlayFormat.LockHolder(overlay, forWriting: true));
        Assert.True(OverlayFormat.BreakLock(overlay).Succeeded);
    }

    private static void AssertFilled(IBlockDevice device, long offset, int length, byte value)
    {
        byte[] data = new byte[length];
        Assert.Equal(IoStatus.Ok, device.ReadAt(offset, data));
        Assert.Equal(-1, data.AsSpan().IndexOfAnyExcept(value));
    }
}
