using XenDisk.Cow.Bitmap;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Bitmap.Support;

/// <summary>Where a test's CoW and base devices live.</summary>
public enum BitmapDeviceKind
{
    /// <summary>MemoryBlockDevice for both.</summary>
    Memory,

    /// <summary>Raw image files in /var/tmp (O_DIRECT where the file system allows it).</summary>
    Files,

    /// <summary>The CoW device is a loop device (512-byte sectors) over an image file; the base a raw file.</summary>
    Loop,

    /// <summary>The CoW device is a loop device with 4096-byte logical sectors.</summary>
    Loop4K,
}

/// <summary>
/// A base device with known random contents and a CoW device big enough for an overlay of it, of a
/// given kind, with everything behind them (files, loop devices) removed on <see cref="Dispose"/>.
/// The devices are handed to overlays with OwnsDevices = false and stay open here.
/// </summary>
public sealed class BitmapDisks : IDisposable
{
    // losetup -f picks the first free device and then attaches; two at once in this process could pick the same one.
    internal static readonly Lock LosetupGate = new();

    private readonly TempDirectory? _directory;
    private readonly string? _loop;

    private BitmapDisks(BitmapDeviceKind kind, IBlockDevice cow, IBlockDevice baseDevice, byte[] baseContents, TempDirectory? directory, string? loop)
    {
        Kind = kind;
        Cow = cow;
        Base = baseDevice;
        BaseContents = baseContents;
        _directory = directory;
        _loop = loop;
    }

    public BitmapDeviceKind Kind { get; }

    public IBlockDevice Cow { get; private set; }

    public IBlockDevice Base { get; }

    /// <summary>What the base holds (it must never change).</summary>
    public byte[] BaseContents { get; }

    public static BitmapDisks Create(BitmapDeviceKind kind, long baseSize, long cowSize, int seed, bool writableBase = false)
    {
        byte[] contents = new byte[baseSize];
        new Random(seed).NextBytes(contents);
        if (kind == BitmapDeviceKind.Memory)
        {
            var baseDevice = new MemoryBlockDevice(baseSize);
            contents.CopyTo(baseDevice.Contents);
            return new BitmapDisks(kind, new MemoryBlockDevice(cowSize), writableBase ? baseDevice : new ReadOnlyView(baseDevice), contents, null, null);
        }
        TempDirectory directory = new("xendisk-bitmap-tests-", "/var/tmp");
        try
        {
            string basePath = directory.File("base.img");
            File.WriteAllBytes(basePath, contents);
            string cowPath = directory.File("cow.img");
            using (var stream = new FileStream(cowPath, FileMode.CreateNew, FileAccess.Write))
            {
                stream.SetLength(cowSize);
            }
            IBlockDevice baseDevice = RawBlockDevice.Open(basePath, readOnly: !writableBase);
            string? loop = null;
            if (kind is BitmapDeviceKind.Loop or BitmapDeviceKind.Loop4K)
            {
                lock (LosetupGate)
                {
                    loop = kind == BitmapDeviceKind.Loop4K
                        ? ProcessRunner.Output("losetup", "-f", "--show", "--sector-size", "4096", cowPath)
                        : ProcessRunner.Output("losetup", "-f", "--show", cowPath);
                }
            }
            IBlockDevice cow = RawBlockDevice.Open(loop ?? cowPath, readOnly: false);
            return new BitmapDisks(kind, cow, baseDevice, contents, directory, loop);
        }
        catch
        {
            directory.Dispose();
            throw;
        }
    }

    /// <summary>Closes and reopens the CoW device (files and loop devices: the same storage; memory: kept).</summary>
    public void ReopenCow()
    {
        if (Kind == BitmapDeviceKind.Memory)
        {
            return;
        }
        string path = _loop ?? _directory!.File("cow.img");
        Cow.Dispose();
        Cow = RawBlockDevice.Open(path, readOnly: false);
    }

    public byte[] ReadBase()
    {
        byte[] contents = new byte[Base.Info.SizeBytes];
        Assert.Equal(IoStatus.Ok, Base.ReadAt(0, contents));
        return contents;
    }

    public void Dispose()
    {
        Cow.Dispose();
        Base.Dispose();
        if (_loop is not null)
        {
            lock (LosetupGate)
            {
                ProcessRunner.Output("losetup", "-d", _loop);
            }
        }
        _directory?.Dispose();
    }
}

/// <summary>A read-only view of a device: the base as an overlay sees it (writes refused).</summary>
public sealed class ReadOnlyView(IBlockDevice inner) : IBlockDevice
{
    public IBlockDevice Inner => inner;

    public BlockDeviceInfo Info { get; } = inner.Info with { ReadOnly = true };

    public bool CompletesInline => inner.CompletesInline;

    public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers) => inner.Read(offset, buffers);

    public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers) => IoStatus.ReadOnly;

    public IoStatus Flush() => IoStatus.Ok;

    public IoStatus Discard(long offset, long length, bool secure) => IoStatus.ReadOnly;

    public BlockDeviceInfo Refresh() => Info;

    public void Dispose() => inner.Dispose();
}
