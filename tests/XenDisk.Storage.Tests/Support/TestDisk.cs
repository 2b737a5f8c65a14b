using System.Globalization;
using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Storage;

namespace XenDisk.Storage.Tests.Support;

/// <summary>
/// One disk of a given <see cref="DeviceKind"/> with everything behind it (image file, loop device,
/// ramfs mount), torn down in <see cref="Dispose"/>. Image files carry a trailing partial sector of
/// sentinel bytes that is not part of the disk, so tests can prove nothing was written past the end.
/// An overlay's base is a raw file made by qemu-img; the overlay is the image file.
/// </summary>
public sealed class TestDisk : IDisposable
{
    public const long DefaultSize = 4 * 1024 * 1024;
    public const int SentinelLength = 300;
    public const byte SentinelByte = 0xA5;

    // losetup -f picks the first free device and then attaches; two at once can pick the same one.
    private static readonly Lock LosetupGate = new();

    private readonly TempDirectory? _directory;
    private readonly string? _ramfsMount;
    private readonly string? _loopDevice;

    private TestDisk(DeviceKind kind, IBlockDevice device, string? imagePath, TempDirectory? directory, string? ramfsMount, string? loopDevice, string? basePath = null)
    {
        BasePath = basePath;
        Kind = kind;
        Device = device;
        ImagePath = imagePath;
        _directory = directory;
        _ramfsMount = ramfsMount;
        _loopDevice = loopDevice;
    }

    public DeviceKind Kind { get; }

    public IBlockDevice Device { get; private set; }

    /// <summary>The image file (behind a loop device too), or null for memory.</summary>
    public string? ImagePath { get; }

    /// <summary>The path the device was opened from: the image or the loop device.</summary>
    public string? DevicePath => _loopDevice ?? ImagePath;

    public bool IsFile => Kind is DeviceKind.DiskFile or DeviceKind.TmpfsFile or DeviceKind.RamfsFile;

    public bool IsLoop => Kind is DeviceKind.LoopDevice or DeviceKind.LoopDevice4K;

    public bool IsOverlay => Kind is DeviceKind.Qcow2Overlay or DeviceKind.BitmapOverlay;

    /// <summary>An overlay's base file, or null.</summary>
    public string? BasePath { get; }

    public static TestDisk Create(DeviceKind kind, long size = DefaultSize, bool readOnly = false)
    {
        switch (kind)
        {
            case DeviceKind.Memory:
                return new TestDisk(kind, new MemoryBlockDevice(size, readOnly: readOnly), null, null, null, null);
            case DeviceKind.DiskFile:
            case DeviceKind.TmpfsFile:
            {
                TempDirectory directory = CreateDirectory(kind == DeviceKind.DiskFile ? "/var/tmp" : "/dev/shm");
                string image = CreateImage(directory, size, withSentinel: true);
                return Open(kind, image, directory, null, null, readOnly);
            }
            case DeviceKind.RamfsFile:
            {
                TempDirectory directory = CreateDirectory("/var/tmp");
                ProcessRunner.Output("mount", "-t", "ramfs", "ramfs", directory.Path);
                try
                {
                    string image = CreateImage(directory, size, withSentinel: true);
                    return Open(kind, image, directory, directory.Path, null, readOnly);
                }
                catch
                {
                    ProcessRunner.Output("umount", directory.Path);
                    directory.Dispose();
                    throw;
                }
            }
            case DeviceKind.LoopDevice:
            case DeviceKind.LoopDevice4K:
            {
                TempDirectory directory = CreateDirectory("/var/tmp");
                string image = CreateImage(directory, size, withSentinel: false);
                string loop;
                lock (LosetupGate)
                {
                    loop = kind == DeviceKind.LoopDevice4K
                        ? ProcessRunner.Output("losetup", "-f", "--show", "--sector-size", "4096", image)
                        : ProcessRunner.Output("losetup", "-f", "--show", image);
                }
                try
                {
                    return Open(kind, image, directory, null, loop, readOnly);
                }
                catch
                {
                    ProcessRunner.Output("losetup", "-d", loop);
                    throw;
                }
            }
            case DeviceKind.Qcow2Overlay:
            case DeviceKind.BitmapOverlay:
            {
                TempDirectory directory = CreateDirectory("/var/tmp");
                string basePath = directory.File("base.raw");
                ProcessRunner.Output("qemu-img", "create", "-q", "-f", "raw", basePath, size.ToString(CultureInfo.InvariantCulture));
                string overlay = directory.File(kind == DeviceKind.Qcow2Overlay ? "disk.qcow2" : "disk.bitmap");
                if (kind == DeviceKind.Qcow2Overlay)
                {
                    ProcessRunner.Output("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", overlay);
                }
                else
                {
                    OverlayFiles.CreateBitmapFile(overlay, BitmapOverlay.RequiredCowSize(size), FilePreallocation.Falloc);
                    IBlockDevice cow = ImageLocks.OpenRaw(overlay, readOnly: false);
                    IBlockDevice baseDevice = ImageLocks.OpenRaw(basePath, readOnly: true);
                    BitmapOverlay.Create(cow, baseDevice, new BitmapCreateOptions { BaseName = basePath }).Dispose();
                }
                return new TestDisk(kind, OpenOverlay(kind, overlay, basePath, readOnly), overlay, directory, null, null, basePath);
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(kind), kind, null);
        }
    }

    /// <summary>Opens the overlay and its base the way tools open an image file: locked, the base read-only.</summary>
    private static IBlockDevice OpenOverlay(DeviceKind kind, string overlay, string basePath, bool readOnly)
    {
        if (kind == DeviceKind.Qcow2Overlay)
        {
            return Qcow2Disk.Open(overlay, new Qcow2OpenOptions { ReadOnly = readOnly, BackingPolicy = BackingFilePolicy.InDirectories(Path.GetDirectoryName(overlay)!) });
        }
        IBlockDevice cow = ImageLocks.OpenRaw(overlay, readOnly);
        try
        {
            return BitmapOverlay.Open(cow, ImageLocks.OpenRaw(basePath, readOnly: true), new BitmapOverlayOptions { ReadOnly = readOnly });
        }
        catch
        {
            cow.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Opens another device over the same storage (memory: not possible, so a fresh device). An overlay
    /// is first closed: like QEMU, the engines lock an image against a second opener while one writes it.
    /// </summary>
    public IBlockDevice OpenAgain(bool readOnly, RawDeviceOptions? options = null)
    {
        if (IsOverlay)
        {
            Device.Dispose();
            return OpenOverlay(Kind, ImagePath!, BasePath!, readOnly);
        }
        return DevicePath is null ? new MemoryBlockDevice(Device.Info.SizeBytes, readOnly: readOnly) : RawBlockDevice.Open(DevicePath, readOnly, options);
    }

    /// <summary>Grows the storage underneath the open device, the way an operator resizes a disk online.</summary>
    public void Grow(long newSize)
    {
        if (Device is MemoryBlockDevice memory)
        {
            memory.Resize(newSize);
            return;
        }
        if (Device is Qcow2Image qcow2)
        {
            // A qcow2 disk grows by its virtual size (the operation qemu-img resize performs offline).
            Assert.Equal(IoStatus.Ok, qcow2.Resize(newSize));
            return;
        }
        // A bitmap overlay's size is fixed by its header: the base grows underneath it.
        using (var stream = new FileStream(BasePath ?? ImagePath!, FileMode.Open, FileAccess.ReadWrite))
        {
            stream.SetLength(newSize);
        }
        if (_loopDevice is not null)
        {
            lock (LosetupGate)
            {
                ProcessRunner.Output("losetup", "-c", _loopDevice);
            }
        }
    }

    /// <summary>The bytes of the image file after the disk's end (the sentinel), or empty.</summary>
    public byte[] ReadImageTail()
    {
        if (ImagePath is null || _loopDevice is not null || IsOverlay)
        {
            return [];
        }
        byte[] all = File.ReadAllBytes(ImagePath);
        return all[(int)Device.Info.SizeBytes..];
    }

    public long ImageLength => ImagePath is null ? 0 : new FileInfo(ImagePath).Length;

    public void Dispose()
    {
        Device.Dispose();
        if (_loopDevice is not null)
        {
            lock (LosetupGate)
            {
                ProcessRunner.Output("losetup", "-d", _loopDevice);
            }
        }
        if (_ramfsMount is not null)
        {
            ProcessRunner.Output("umount", _ramfsMount);
        }
        _directory?.Dispose();
    }

    private static TestDisk Open(DeviceKind kind, string image, TempDirectory directory, string? ramfs, string? loop, bool readOnly)
    {
        IBlockDevice device = RawBlockDevice.Open(loop ?? image, readOnly);
        return new TestDisk(kind, device, image, directory, ramfs, loop);
    }

    private static TempDirectory CreateDirectory(string parent) => new("xendisk-storage-tests-", parent);

    private static string CreateImage(TempDirectory directory, long size, bool withSentinel)
    {
        string image = directory.File("disk.img");
        using var stream = new FileStream(image, FileMode.CreateNew, FileAccess.Write);
        stream.SetLength(size);
        if (withSentinel)
        {
            stream.Position = size;
            stream.Write(Enumerable.Repeat(SentinelByte, SentinelLength).ToArray());
        }
        return image;
    }
}
