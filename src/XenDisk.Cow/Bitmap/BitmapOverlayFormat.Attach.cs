using Tmds.Linux;
using XenDisk.Cow.Overlays;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Storage;
using XenDisk.Storage;
using XenDisk.Storage.Iscsi;
using static XenDisk.Cow.Overlays.OverlayAttachment;

namespace XenDisk.Cow.Bitmap;

/// <summary>A bitmap overlay, on a file or a block device, as the disk provider attaches it over a base (cow:BASE,OVERLAY,format=bitmap).</summary>
internal sealed partial class BitmapOverlayFormat
{
    /// <summary>Bytes examined to tell a blank device (all zeros) from one holding something else.</summary>
    private const int BlankCheckBytes = BitmapFormat.HeaderRegionSize;

    internal override AttachedOverlay Attach(OverlayAttachment attachment, IBlockDevice baseDevice)
    {
        string basePath = attachment.BasePath;
        string overlayPath = attachment.OverlayPath;
        MetadataPolicy policy = attachment.Policy;
        bool readOnly = attachment.ReadOnly;
        int grainSize = attachment.GrainSize;
        bool created = false;
        if (!Exists(overlayPath))
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
            cow = attachment.OpenStorage(overlayPath, readOnly);
            bool regularFile = cow is not RawBlockDevice { IsBlockDevice: true } and not IscsiBlockDevice;
            BitmapOverlayOptions options = new() { Policy = policy, ReadOnly = readOnly, OwnsDevices = true };
            bool blank = created || IsBlank(cow, overlayPath);
            if (!blank && !HasMagic(cow))
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
            return new AttachedOverlay(overlay, DeleteFileOnClose: policy == MetadataPolicy.Transient && regularFile);
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

    internal override IOverlayImage? AttachStandalone(OverlayAttachment attachment)
    {
        IBlockDevice storage = attachment.OpenStorage(attachment.OverlayPath, attachment.ReadOnly);
        try
        {
            if (!HasMagic(storage) || !BitmapOverlay.ReadHeader(storage).IsStandalone)
            {
                storage.Dispose();
                return null;
            }
            return BitmapOverlay.Open(storage, null, new BitmapOverlayOptions { Policy = attachment.Policy, ReadOnly = attachment.ReadOnly, OwnsDevices = true });
        }
        catch
        {
            storage.Dispose();
            throw;
        }
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

    private static bool HasMagic(IBlockDevice device)
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
}
