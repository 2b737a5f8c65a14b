using System.Collections.Concurrent;
using Tmds.Linux;
using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Provider;

/// <summary>
/// Opens the disks a toolstack describes (see <see cref="CowTarget"/> for the syntax):
/// <list type="bullet">
/// <item><c>raw:PATH</c> or a bare absolute path: a raw file or block device, through <see cref="CowProviderOptions.RawProvider"/>.</item>
/// <item><c>qcow2:PATH[,policy=P]</c>: a qcow2 image; its backing chain comes from the headers and every
/// backing file must lie, after following symbolic links, under <see cref="CowProviderOptions.AllowedBaseDirectories"/>.</item>
/// <item><c>cow:BASE,OVERLAY[,format=qcow2|bitmap][,policy=sync|flush|lazy|transient][,cluster=64k][,grain=4k][,base-format=raw|qcow2]</c>:
/// BASE is opened read-only (O_RDONLY, one descriptor per device, so many guests share it) and never
/// written; OVERLAY is this device's copy-on-write layer, created over BASE when it does not exist (a
/// qcow2 file of BASE's size naming BASE as its backing file, or a bitmap overlay on a sparse file of
/// the size it needs, or on a blank block device). An existing overlay must record BASE as its base;
/// a qcow2 overlay that no longer names a backing file (hydrated) stands alone and is opened without it.
/// With policy=transient the overlay is created afresh (replacing a regular file left by an earlier
/// run) and its file is deleted when the disk is closed.</item>
/// </list>
/// A read-only specification (<c>mode=r</c>) opens everything read-only and creates nothing. Every
/// refusal is a <see cref="StorageException"/> whose message is meant for the operator (it ends up in
/// the backend's xenstore "error" node).
/// <para>
/// Thread-safe. Besides its options the provider holds one piece of state: the copy-on-write images it
/// handed out that are still open (<see cref="GetOpenOverlays"/>), for telemetry. An image is added when
/// it is returned and forgets itself when it is disposed; the devices returned are the images themselves,
/// unwrapped, so nothing is added to their I/O path.
/// </para>
/// </summary>
public sealed class CowDiskProvider : IDiskProvider
{
    /// <summary>Bytes examined to tell a blank device (all zeros) from one holding something else.</summary>
    private const int BlankCheckBytes = BitmapFormat.HeaderRegionSize;

    private readonly CowProviderOptions _options;
    private readonly string[] _allowedDirectories;
    private readonly ConcurrentDictionary<ICopyOnWriteImage, byte> _openOverlays = new(ReferenceEqualityComparer.Instance);

    public CowDiskProvider(CowProviderOptions? options = null)
    {
        _options = options ?? new CowProviderOptions();
        _options.Validate();
        _allowedDirectories = _options.AllowedBaseDirectories.Select(d => WithSeparator(SymbolicLinks.Resolve(Path.GetFullPath(d)))).ToArray();
    }

    /// <summary>The qcow2 images and bitmap overlays opened through this provider and not yet disposed (a snapshot).</summary>
    public IReadOnlyList<ICopyOnWriteImage> GetOpenOverlays() => [.. _openOverlays.Keys];

    public IBlockDevice Open(DiskSpecification specification)
    {
        ArgumentNullException.ThrowIfNull(specification);
        CowTarget target = CowTarget.Parse(specification.Target);
        return target.Kind switch
        {
            CowTargetKind.Raw => OpenRaw(specification with { Target = target.Path! }),
            CowTargetKind.Qcow2 => OpenQcow2(target, specification.ReadOnly),
            _ => OpenCow(target, specification.ReadOnly, specification.Type),
        };
    }

    private IBlockDevice OpenQcow2(CowTarget target, bool readOnly)
    {
        string path = target.Path!;
        MetadataPolicy policy = target.Policy ?? _options.DefaultPolicy;
        if (policy == MetadataPolicy.Transient)
        {
            throw Refuse($"qcow2:{path}: policy=transient would delete the image when the disk closes; use cow:BASE,OVERLAY,policy=transient for a throw-away overlay.");
        }
        if (!File.Exists(path))
        {
            throw Refuse($"Image {path} does not exist.", LibC.ENOENT);
        }
        BackingRefusal refusal = new();
        try
        {
            Qcow2Image image = Qcow2Disk.Open(path, new Qcow2OpenOptions
            {
                Policy = policy,
                ReadOnly = readOnly,
                BackingPolicy = BackingPolicyFor(refusal),
                Logger = _options.Logger,
            });
            return Track(RequireWritable(image, readOnly, path), image);
        }
        catch (StorageException e) when (refusal.Path != null)
        {
            throw NotAllowed(refusal.Path, $"a backing file of {path}", e);
        }
        catch (StorageException e)
        {
            throw Refuse($"Cannot open qcow2 image {path}: {e.Message}", e.Errno, e);
        }
    }

    private IBlockDevice OpenCow(CowTarget target, bool readOnly, string? type)
    {
        string basePath = target.BasePath!;
        string overlayPath = target.OverlayPath!;
        CowOverlayFormat format = target.OverlayFormat ?? _options.DefaultOverlayFormat;
        MetadataPolicy policy = target.Policy ?? _options.DefaultPolicy;
        if (format == CowOverlayFormat.Bitmap && target.ClusterSize != null)
        {
            throw Refuse($"cow:{basePath},{overlayPath}: cluster= applies to qcow2 overlays; bitmap overlays take grain=.");
        }
        if (format == CowOverlayFormat.Qcow2 && target.GrainSize != null)
        {
            throw Refuse($"cow:{basePath},{overlayPath}: grain= applies to bitmap overlays; qcow2 overlays take cluster=.");
        }
        if (policy == MetadataPolicy.Transient && readOnly)
        {
            throw Refuse($"cow:{basePath},{overlayPath}: policy=transient needs a writable disk (the disk is attached read-only).");
        }
        if (basePath == overlayPath || SymbolicLinks.Resolve(basePath) == SymbolicLinks.Resolve(overlayPath))
        {
            throw Refuse($"cow:{basePath},{overlayPath}: the base and the overlay are the same file.");
        }
        if (_allowedDirectories.Length > 0 && !IsAllowed(basePath))
        {
            throw NotAllowed(basePath, "the base", inner: null);
        }
        if (!File.Exists(basePath))
        {
            // A hydrated overlay holds the whole disk: the base may have been retired.
            return OpenStandaloneOverlay(target, format, policy, readOnly, type)
                ?? throw Refuse($"Base image {basePath} does not exist.", LibC.ENOENT);
        }

        IBlockDevice baseDevice = OpenBase(basePath, target.BaseFormat, type);
        try
        {
            long baseSize = baseDevice.Info.SizeBytes;
            if (baseSize <= 0 || baseSize % 512 != 0)
            {
                throw Refuse($"Base image {basePath} is {baseSize} bytes; a base must be a non-empty whole number of 512-byte sectors.");
            }
            return format == CowOverlayFormat.Qcow2
                ? OpenQcow2Overlay(target, baseDevice, policy, readOnly)
                : OpenBitmapOverlay(target, baseDevice, policy, readOnly, type);
        }
        catch
        {
            baseDevice.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Opens an existing overlay that no longer needs a base (hydrated: a qcow2 header without a
    /// backing file, a bitmap header with the standalone flag); null when there is no such overlay,
    /// so the caller reports the missing base. A transient overlay is recreated, which needs the base.
    /// </summary>
    private IBlockDevice? OpenStandaloneOverlay(CowTarget target, CowOverlayFormat format, MetadataPolicy policy, bool readOnly, string? type)
    {
        string overlayPath = target.OverlayPath!;
        if (policy == MetadataPolicy.Transient || !File.Exists(overlayPath))
        {
            return null;
        }
        IBlockDevice? storage = null;
        try
        {
            if (format == CowOverlayFormat.Qcow2)
            {
                if (!IsRegularFileOrRefuse(overlayPath) || new FileInfo(overlayPath).Length == 0)
                {
                    return null;
                }
                storage = OverlayFiles.OpenQcow2(overlayPath, readOnly);
                if (Qcow2Disk.ReadHeader(storage).BackingFile != null)
                {
                    storage.Dispose();
                    return null;
                }
                Qcow2Image image = Qcow2Image.Open(storage, null, new Qcow2OpenOptions { Policy = policy, ReadOnly = readOnly, OwnsDevices = true, Logger = _options.Logger });
                return Track(RequireWritable(image, readOnly, overlayPath), image);
            }
            storage = OpenRaw(new DiskSpecification(overlayPath, readOnly, type));
            if (!HasBitmapMagic(storage) || !BitmapOverlay.ReadHeader(storage).IsStandalone)
            {
                storage.Dispose();
                return null;
            }
            BitmapOverlay overlay = BitmapOverlay.Open(storage, null, new BitmapOverlayOptions { Policy = policy, ReadOnly = readOnly, OwnsDevices = true });
            return Track(RequireWritable(overlay, readOnly, overlayPath), overlay);
        }
        catch (StorageException e)
        {
            storage?.Dispose();
            throw Refuse($"Overlay {overlayPath} (its base {target.BasePath} is gone): {e.Message}", e.Errno, e);
        }
    }

    private IBlockDevice OpenBase(string basePath, string baseFormat, string? type)
    {
        if (baseFormat == "raw")
        {
            try
            {
                return OpenRaw(new DiskSpecification(basePath, ReadOnly: true, type));
            }
            catch (StorageException e)
            {
                throw Refuse($"Cannot open base image {basePath}: {e.Message}", e.Errno, e);
            }
        }
        BackingRefusal refusal = new();
        try
        {
            return Qcow2Disk.Open(basePath, new Qcow2OpenOptions { ReadOnly = true, BackingPolicy = BackingPolicyFor(refusal) });
        }
        catch (StorageException e) when (refusal.Path != null)
        {
            throw NotAllowed(refusal.Path, $"a backing file of the base {basePath}", e);
        }
        catch (StorageException e)
        {
            throw Refuse($"Cannot open base image {basePath} as qcow2: {e.Message}", e.Errno, e);
        }
    }

    private IBlockDevice OpenQcow2Overlay(CowTarget target, IBlockDevice baseDevice, MetadataPolicy policy, bool readOnly)
    {
        string basePath = target.BasePath!;
        string overlayPath = target.OverlayPath!;
        long baseSize = baseDevice.Info.SizeBytes;
        bool exists = File.Exists(overlayPath);
        if (exists && !IsRegularFileOrRefuse(overlayPath))
        {
            throw Refuse($"Overlay {overlayPath} is not a regular file; qcow2 overlays are files (use format=bitmap on a block device).");
        }
        if (!exists || new FileInfo(overlayPath).Length == 0 || policy == MetadataPolicy.Transient)
        {
            if (readOnly)
            {
                throw Refuse($"Overlay {overlayPath} does not exist, and a read-only disk creates nothing.", LibC.ENOENT);
            }
            try
            {
                Qcow2Disk.Create(overlayPath, new Qcow2CreateOptions
                {
                    VirtualSize = baseSize,
                    ClusterSize = target.ClusterSize ?? _options.DefaultClusterSize,
                    BackingFile = basePath,
                    BackingFormat = target.BaseFormat,
                }, overwrite: exists);
            }
            catch (Exception e) when (e is StorageException or ArgumentException)
            {
                throw Refuse($"Cannot create qcow2 overlay {overlayPath} over {basePath}: {e.Message}", (e as StorageException)?.Errno ?? 0, e);
            }
        }

        IBlockDevice overlay;
        try
        {
            overlay = OverlayFiles.OpenQcow2(overlayPath, readOnly);
        }
        catch (StorageException e)
        {
            throw Refuse($"Cannot open overlay {overlayPath}: {e.Message}", e.Errno, e);
        }
        try
        {
            Qcow2Header header;
            try
            {
                header = Qcow2Disk.ReadHeader(overlay);
            }
            catch (StorageException e)
            {
                throw Refuse($"Overlay {overlayPath} is not a usable qcow2 image: {e.Message}", e.Errno, e);
            }
            IBlockDevice? backing = baseDevice;
            if (header.BackingFile == null)
            {
                // Hydrated: the overlay holds the whole disk and needs no base.
                backing = null;
            }
            else
            {
                string recorded;
                try
                {
                    recorded = Qcow2Disk.ResolveBackingPath(overlayPath, header.BackingFile);
                }
                catch (StorageException e)
                {
                    throw Refuse($"Overlay {overlayPath}: {e.Message}", e.Errno, e);
                }
                if (!SamePath(recorded, basePath))
                {
                    throw Refuse($"Overlay {overlayPath} records the backing file '{header.BackingFile}' ({recorded}), not the base {basePath} named by the target; refusing to pair it with a different base (fix the target, or remove the overlay to start afresh).");
                }
                if (header.BackingFormat != target.BaseFormat)
                {
                    throw Refuse($"Overlay {overlayPath} records the backing format '{header.BackingFormat ?? "(none)"}', but the target says base-format={target.BaseFormat}.");
                }
                if (header.VirtualSize != baseSize)
                {
                    throw Refuse($"Overlay {overlayPath} is a {header.VirtualSize}-byte disk but the base {basePath} is {baseSize} bytes; an overlay and its base must have the same size.");
                }
            }
            Qcow2Image image;
            try
            {
                image = Qcow2Image.Open(overlay, backing, new Qcow2OpenOptions { Policy = policy, ReadOnly = readOnly, OwnsDevices = true, Logger = _options.Logger });
            }
            catch (StorageException e)
            {
                throw Refuse($"Overlay {overlayPath} is not a usable qcow2 image: {e.Message}", e.Errno, e);
            }
            if (backing == null)
            {
                baseDevice.Dispose();
            }
            IBlockDevice device = Track(RequireWritable(image, readOnly, overlayPath), image);
            return policy == MetadataPolicy.Transient ? new FileRemovingDevice(device, overlayPath) : device;
        }
        catch
        {
            overlay.Dispose();
            throw;
        }
    }

    private IBlockDevice OpenBitmapOverlay(CowTarget target, IBlockDevice baseDevice, MetadataPolicy policy, bool readOnly, string? type)
    {
        string basePath = target.BasePath!;
        string overlayPath = target.OverlayPath!;
        int grainSize = target.GrainSize ?? _options.DefaultGrainSize;
        bool created = false;
        if (!File.Exists(overlayPath))
        {
            if (readOnly)
            {
                throw Refuse($"Overlay {overlayPath} does not exist, and a read-only disk creates nothing.", LibC.ENOENT);
            }
            try
            {
                OverlayFiles.CreateBitmapFile(overlayPath, BitmapOverlay.RequiredCowSize(baseDevice.Info.SizeBytes, grainSize), FilePreallocation.Falloc);
            }
            catch (StorageException e)
            {
                throw Refuse($"Cannot create overlay {overlayPath}: {e.Message}", e.Errno, e);
            }
            created = true;
        }
        IBlockDevice? cow = null;
        try
        {
            cow = OpenRaw(new DiskSpecification(overlayPath, readOnly, type));
            bool regularFile = cow is not RawBlockDevice { IsBlockDevice: true };
            BitmapOverlayOptions options = new() { Policy = policy, ReadOnly = readOnly, OwnsDevices = true };
            bool blank = created || IsBlank(cow, overlayPath);
            if (!blank && !HasBitmapMagic(cow))
            {
                throw Refuse($"Overlay {overlayPath} is neither blank nor a bitmap overlay; refusing to use or overwrite what it holds.");
            }
            BitmapOverlay overlay;
            if (blank || policy == MetadataPolicy.Transient)
            {
                if (readOnly)
                {
                    throw Refuse($"Overlay {overlayPath} is blank, and a read-only disk creates nothing.");
                }
                overlay = BitmapOverlay.Create(cow, baseDevice, new BitmapCreateOptions { GrainSize = grainSize, BaseName = basePath }, options);
            }
            else
            {
                BitmapHeader header = BitmapOverlay.ReadHeader(cow);
                if (header.BaseName.Length > 0 && !SamePath(header.BaseName, basePath))
                {
                    throw Refuse($"Overlay {overlayPath} was made over the base \"{header.BaseName}\", not the base {basePath} named by the target; refusing to pair it with a different base.");
                }
                overlay = BitmapOverlay.Open(cow, baseDevice, options);
            }
            IBlockDevice device = Track(RequireWritable(overlay, readOnly, overlayPath), overlay);
            return policy == MetadataPolicy.Transient && regularFile ? new FileRemovingDevice(device, overlayPath) : device;
        }
        catch (StorageException e) when (!e.Message.Contains(overlayPath, StringComparison.Ordinal))
        {
            Cleanup();
            throw Refuse($"Overlay {overlayPath}: {e.Message}", e.Errno, e);
        }
        catch
        {
            Cleanup();
            throw;
        }

        void Cleanup()
        {
            cow?.Dispose();
            if (created)
            {
                TryDelete(overlayPath);
            }
        }
    }

    /// <summary>Remembers <paramref name="image"/> until it is disposed; returns <paramref name="device"/> (the image, or what wraps it).</summary>
    private IBlockDevice Track(IBlockDevice device, ICopyOnWriteImage image)
    {
        _openOverlays.TryAdd(image, 0);
        image.Statistics.WhenClosed(() => _openOverlays.TryRemove(image, out _));
        return device;
    }

    /// <summary>A disk the toolstack attached writable must not quietly become read-only (corrupt bit, version 2, snapshots).</summary>
    private static IBlockDevice RequireWritable(IBlockDevice device, bool readOnly, string path)
    {
        if (readOnly || !device.Info.ReadOnly)
        {
            return device;
        }
        string reason = (device as Qcow2Image)?.ReadOnlyReason ?? "the storage is read-only";
        device.Dispose();
        throw Refuse($"Image {path} cannot be written: {reason}. Attach it read-only, or repair it first.", LibC.EROFS);
    }

    /// <summary>The backing file policy for images: allowed base directories after following symbolic links; records the first refused path.</summary>
    private BackingFilePolicy BackingPolicyFor(BackingRefusal refusal) => new()
    {
        Allow = (fullPath, _) =>
        {
            if (IsAllowed(fullPath))
            {
                return true;
            }
            refusal.Path ??= fullPath;
            return false;
        },
    };

    private bool IsAllowed(string fullPath)
    {
        string real = SymbolicLinks.Resolve(fullPath);
        foreach (string directory in _allowedDirectories)
        {
            if (real.StartsWith(directory, StringComparison.Ordinal))
            {
                return true;
            }
        }
        return false;
    }

    private StorageException NotAllowed(string path, string role, Exception? inner)
    {
        string allowed = _allowedDirectories.Length == 0 ? "none are configured" : "allowed: " + string.Join(", ", _options.AllowedBaseDirectories);
        return Refuse($"Backing file {path} ({role}) is not under an allowed base directory ({allowed}); add its directory to the copy-on-write provider's AllowedBaseDirectories setting.", LibC.EACCES, inner);
    }

    private static bool SamePath(string a, string b) => Path.GetFullPath(a) == Path.GetFullPath(b) || SymbolicLinks.Resolve(a) == SymbolicLinks.Resolve(b);

    /// <summary>
    /// True for a regular file, false for a block device; refuses anything else (a FIFO would block
    /// the open, a directory or character device is no disk). The raw device's checks decide.
    /// </summary>
    private static bool IsRegularFile(string path)
    {
        using RawBlockDevice probe = RawBlockDevice.Open(path, readOnly: true, new RawDeviceOptions { DirectIo = false });
        return !probe.IsBlockDevice;
    }

    /// <summary>True when the first bytes of the device are all zeros: nothing to lose by creating an overlay there.</summary>
    private static bool IsBlank(IBlockDevice device, string path)
    {
        if (device.Info.SizeBytes < BlankCheckBytes)
        {
            return true;
        }
        using AlignedBlock block = new(BlankCheckBytes);
        IoStatus status = device.Read(0, [block.AsIoBuffer()]);
        if (status != IoStatus.Ok)
        {
            throw Refuse($"Cannot read overlay {path} ({status.Describe()}).");
        }
        return !block.Span.ContainsAnyExcept((byte)0);
    }

    private static bool HasBitmapMagic(IBlockDevice device)
    {
        using AlignedBlock block = new(BlankCheckBytes);
        return device.Read(0, [block.AsIoBuffer()]) == IoStatus.Ok && block.Span.StartsWith(BitmapFormat.Magic);
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A half-made overlay left behind is refused as not blank or recreated next time; nothing else depends on it.
        }
    }

    private static bool IsRegularFileOrRefuse(string path)
    {
        try
        {
            return IsRegularFile(path);
        }
        catch (StorageException e)
        {
            throw Refuse($"Overlay {path} cannot be used: {e.Message}", e.Errno, e);
        }
    }

    private static string WithSeparator(string directory) => Path.TrimEndingDirectorySeparator(directory) + Path.DirectorySeparatorChar;

    /// <summary>
    /// Opens a raw file or device through <see cref="CowProviderOptions.RawProvider"/> with QEMU's image
    /// locks on it (<see cref="ImageLocks"/>): a base shared by many guests takes reader locks, which
    /// coexist; an overlay or a raw disk written by a guest takes writer locks, which QEMU respects.
    /// </summary>
    private IBlockDevice OpenRaw(DiskSpecification specification)
    {
        IBlockDevice device = _options.RawProvider.Open(specification);
        try
        {
            ImageLocks.Acquire(device, specification.Target, writable: !specification.ReadOnly);
            return device;
        }
        catch
        {
            device.Dispose();
            throw;
        }
    }

    private static StorageException Refuse(string message, int errno = 0, Exception? inner = null) => new(message, errno, inner);

    private sealed class BackingRefusal
    {
        public string? Path;
    }
}
