using System.Collections.Concurrent;
using Tmds.Linux;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Storage;
using XenDisk.Cow.Overlays;
using XenDisk.Storage;
using XenDisk.Storage.Iscsi;
using static XenDisk.Cow.Overlays.OverlayAttachment;

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
        if (IsLun(path))
        {
            throw Refuse($"qcow2:{path}: a qcow2 image lives in a file; on an iSCSI LUN use raw: or a bitmap overlay (cow:BASE,LUN,format=bitmap).");
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
                Iscsi = _options.RawProvider.Iscsi,
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
        OverlayFormat format = target.OverlayFormat ?? _options.DefaultOverlayFormat;
        MetadataPolicy policy = target.Policy ?? _options.DefaultPolicy;
        foreach ((string option, int? value) in (ReadOnlySpan<(string, int?)>)[("cluster", target.ClusterSize), ("grain", target.GrainSize)])
        {
            if (value != null && option != format.UnitOptionName)
            {
                string owner = OverlayFormat.All.First(f => f.UnitOptionName == option).Name;
                throw Refuse($"cow:{basePath},{overlayPath}: {option}= applies to {owner} overlays; {format.Name} overlays take {format.UnitOptionName}=.");
            }
        }
        if (policy == MetadataPolicy.Transient && readOnly)
        {
            throw Refuse($"cow:{basePath},{overlayPath}: policy=transient needs a writable disk (the disk is attached read-only).");
        }
        if (SamePath(basePath, overlayPath))
        {
            throw Refuse($"cow:{basePath},{overlayPath}: the base and the overlay are the same file.");
        }
        if (_allowedDirectories.Length > 0 && !IsAllowed(basePath))
        {
            throw NotAllowed(basePath, "the base", inner: null);
        }
        if (format == OverlayFormat.Qcow2 && IsLun(overlayPath))
        {
            throw Refuse($"cow:{basePath},{overlayPath}: a qcow2 overlay lives in a file; on an iSCSI LUN use format=bitmap.");
        }
        if (!Exists(basePath))
        {
            // A hydrated overlay holds the whole disk: the base may have been retired.
            return OpenStandaloneOverlay(format, Attachment(target, policy, readOnly, type))
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
            (IOverlayImage image, bool deleteFileOnClose) = format.Attach(Attachment(target, policy, readOnly, type), baseDevice);
            IBlockDevice device = Track(RequireWritable(image, readOnly, overlayPath), image);
            return deleteFileOnClose ? new FileRemovingDevice(device, overlayPath) : device;
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
    private IBlockDevice? OpenStandaloneOverlay(OverlayFormat format, OverlayAttachment attachment)
    {
        string overlayPath = attachment.OverlayPath;
        if (attachment.Policy == MetadataPolicy.Transient || !Exists(overlayPath))
        {
            return null;
        }
        try
        {
            IOverlayImage? image = format.AttachStandalone(attachment);
            return image == null ? null : Track(RequireWritable(image, attachment.ReadOnly, overlayPath), image);
        }
        catch (StorageException e)
        {
            throw Refuse($"Overlay {overlayPath} (its base {attachment.BasePath} is gone): {e.Message}", e.Errno, e);
        }
    }

    /// <summary>What a format needs to attach the target's overlay: the target's settings over the provider's defaults.</summary>
    private OverlayAttachment Attachment(CowTarget target, MetadataPolicy policy, bool readOnly, string? type) => new()
    {
        BasePath = target.BasePath!,
        OverlayPath = target.OverlayPath!,
        BaseFormat = target.BaseFormat,
        Policy = policy,
        ReadOnly = readOnly,
        ClusterSize = target.ClusterSize ?? _options.DefaultClusterSize,
        GrainSize = target.GrainSize ?? _options.DefaultGrainSize,
        Logger = _options.Logger,
        OpenStorage = (path, storageReadOnly) => OpenRaw(new DiskSpecification(path, storageReadOnly, type)),
    };

    private IBlockDevice OpenBase(string basePath, string baseFormat, string? type)
    {
        if (baseFormat != "raw" && IsLun(basePath))
        {
            throw Refuse($"Base {basePath}: an iSCSI LUN is a raw base (base-format=raw).");
        }
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
        string reason = (device as IOverlayImage)?.ReadOnlyReason ?? "the storage is read-only";
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
        if (IsLun(fullPath))
        {
            // LUNs are not under directories: they are allowed wherever iSCSI is enabled (the service's
            // Iscsi section), and the target's own access list decides what this host may log in to.
            return _options.RawProvider.Iscsi != null;
        }
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

    private static StorageException Refuse(string message, int errno = 0, Exception? inner = null) => OverlayAttachment.Refuse(message, errno, inner);

    private sealed class BackingRefusal
    {
        public string? Path;
    }
}
