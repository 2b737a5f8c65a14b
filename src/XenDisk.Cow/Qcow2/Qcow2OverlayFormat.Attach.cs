using Tmds.Linux;
using XenDisk.Cow.Overlays;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Storage;
using XenDisk.Storage;
using static XenDisk.Cow.Overlays.OverlayAttachment;

namespace XenDisk.Cow.Qcow2;

/// <summary>A qcow2 overlay file as the disk provider attaches it over a base (cow:BASE,OVERLAY,format=qcow2).</summary>
internal sealed partial class Qcow2OverlayFormat
{
    internal override AttachedOverlay Attach(OverlayAttachment attachment, IBlockDevice baseDevice)
    {
        string basePath = attachment.BasePath;
        string overlayPath = attachment.OverlayPath;
        MetadataPolicy policy = attachment.Policy;
        bool readOnly = attachment.ReadOnly;
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
                    ClusterSize = attachment.ClusterSize,
                    BackingFile = basePath,
                    BackingFormat = attachment.BaseFormat,
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
                if (header.BackingFormat != attachment.BaseFormat)
                {
                    throw Refuse($"Overlay {overlayPath} records the backing format '{header.BackingFormat ?? "(none)"}', but the target says base-format={attachment.BaseFormat}.");
                }
                if (header.VirtualSize != baseSize)
                {
                    throw Refuse($"Overlay {overlayPath} is a {header.VirtualSize}-byte disk but the base {basePath} is {baseSize} bytes; an overlay and its base must have the same size.");
                }
            }
            Qcow2Image image;
            try
            {
                image = Qcow2Image.Open(overlay, backing, new Qcow2OpenOptions { Policy = policy, ReadOnly = readOnly, OwnsDevices = true, Logger = attachment.Logger });
            }
            catch (StorageException e)
            {
                throw Refuse($"Overlay {overlayPath} is not a usable qcow2 image: {e.Message}", e.Errno, e);
            }
            if (backing == null)
            {
                baseDevice.Dispose();
            }
            return new AttachedOverlay(image, DeleteFileOnClose: policy == MetadataPolicy.Transient);
        }
        catch
        {
            overlay.Dispose();
            throw;
        }
    }

    internal override IOverlayImage? AttachStandalone(OverlayAttachment attachment)
    {
        string overlayPath = attachment.OverlayPath;
        if (!IsRegularFileOrRefuse(overlayPath) || new FileInfo(overlayPath).Length == 0)
        {
            return null;
        }
        IBlockDevice storage = OverlayFiles.OpenQcow2(overlayPath, attachment.ReadOnly);
        try
        {
            if (Qcow2Disk.ReadHeader(storage).BackingFile != null)
            {
                storage.Dispose();
                return null;
            }
            return Qcow2Image.Open(storage, null, new Qcow2OpenOptions { Policy = attachment.Policy, ReadOnly = attachment.ReadOnly, OwnsDevices = true, Logger = attachment.Logger });
        }
        catch
        {
            storage.Dispose();
            throw;
        }
    }
}
