using XenDisk.Cow.Policies;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>
/// Qcow2 images as files: create, and open with the backing chain resolved. Backing file names come
/// from untrusted images, so each one is resolved (relative names against the directory of the image
/// that names it, as QEMU does) and opened only when <see cref="Qcow2OpenOptions.BackingPolicy"/>
/// allows the resolved path. The backing format comes from the header extension and is never probed.
/// </summary>
public static class Qcow2Disk
{
    /// <summary>Creates a qcow2 file. Throws <see cref="StorageException"/> (I/O) or <see cref="ArgumentException"/> (options).</summary>
    public static void Create(string path, Qcow2CreateOptions options, bool overwrite = false)
    {
        using FileImageDevice file = FileImageDevice.Create(path, overwrite);
        try
        {
            Qcow2Image.Create(file, options);
        }
        catch
        {
            file.DeleteOnDispose = true;
            throw;
        }
    }

    /// <summary>
    /// Opens the qcow2 image at <paramref name="path"/> and its backing chain (raw or qcow2 layers,
    /// each opened read-only, at most <see cref="Qcow2OpenOptions.MaximumChainDepth"/> deep). With
    /// <see cref="MetadataPolicy.Transient"/> the overlay file is deleted when the image is disposed.
    /// </summary>
    public static Qcow2Image Open(string path, Qcow2OpenOptions? options = null)
    {
        options ??= new Qcow2OpenOptions();
        string fullPath = Path.GetFullPath(path);
        // Transient images are files deleted on close; every other image is opened as the backend
        // serves overlays (O_DIRECT, preallocated growth).
        IBlockDevice overlay = options.Policy == MetadataPolicy.Transient
            ? FileImageDevice.Open(fullPath, options.ReadOnly)
            : OverlayFiles.OpenQcow2(fullPath, options.ReadOnly);
        IBlockDevice? backing = null;
        try
        {
            Qcow2Header header = ReadHeader(overlay);
            backing = OpenBacking(fullPath, header, options, depth: 1);
            Qcow2Image image = Qcow2Image.Open(overlay, backing, options with { OwnsDevices = true });
            if (options.Policy == MetadataPolicy.Transient && overlay is FileImageDevice file)
            {
                file.DeleteOnDispose = true;
            }
            return image;
        }
        catch
        {
            backing?.Dispose();
            overlay.Dispose();
            throw;
        }
    }

    /// <summary>Reads and validates just the header of an image file (for Info and tools).</summary>
    public static Qcow2Header ReadHeader(IBlockDevice device)
    {
        Qcow2Header header = Qcow2HeaderReader.Read(device, out var firstCluster);
        firstCluster.Dispose();
        return header;
    }

    /// <summary>Resolves a backing file name the way QEMU does: relative to the directory of the image naming it.</summary>
    public static string ResolveBackingPath(string imagePath, string backingName)
    {
        if (XenDisk.Storage.Iscsi.IscsiUrl.IsIscsi(backingName))
        {
            // An iSCSI LUN as QEMU names it (iscsi://HOST[:PORT]/IQN/LUN): the one protocol opened, in canonical form.
            return XenDisk.Storage.Iscsi.IscsiUrl.Parse(backingName).ToString();
        }
        if (backingName.Contains(':') && !Path.IsPathRooted(backingName))
        {
            // Protocol prefixes (nbd:, http:, json:) are not files; refusing them keeps the policy about paths.
            throw new StorageException($"qcow2: backing file '{backingName}' names a protocol, which XenDisk does not open");
        }
        string directory = Path.GetDirectoryName(Path.GetFullPath(imagePath)) ?? "/";
        return Path.GetFullPath(Path.Combine(directory, backingName));
    }

    private static IBlockDevice? OpenBacking(string imagePath, Qcow2Header header, Qcow2OpenOptions options, int depth)
    {
        if (header.BackingFile == null)
        {
            return null;
        }
        if (depth > options.MaximumChainDepth)
        {
            throw new StorageException($"qcow2: the backing chain of '{imagePath}' is deeper than {options.MaximumChainDepth} images (a loop?)");
        }
        string backingPath = ResolveBackingPath(imagePath, header.BackingFile);
        if (!options.BackingPolicy.Allows(backingPath, header.BackingFile))
        {
            throw new StorageException($"qcow2: '{imagePath}' names the backing file '{header.BackingFile}' ({backingPath}), which the backing file policy does not allow");
        }
        string format = header.BackingFormat ?? throw new StorageException(
            $"qcow2: '{imagePath}' names the backing file '{header.BackingFile}' without a backing format; XenDisk never probes formats (set it with 'qemu-img rebase -u -F raw|qcow2')");
        switch (format)
        {
            case "raw" when XenDisk.Storage.Iscsi.IscsiUrl.IsIscsi(backingPath):
                return XenDisk.Storage.Iscsi.IscsiBlockDevice.Open(XenDisk.Storage.Iscsi.IscsiUrl.Parse(backingPath), readOnly: true,
                    options.Iscsi ?? throw new StorageException($"qcow2: '{imagePath}' names the iSCSI LUN {backingPath} as its backing file, and iSCSI is not enabled"));
            case "raw":
                return ImageLocks.OpenRaw(backingPath, readOnly: true);
            case "qcow2" when XenDisk.Storage.Iscsi.IscsiUrl.IsIscsi(backingPath):
                throw new StorageException($"qcow2: '{imagePath}' names the iSCSI LUN {backingPath} as a qcow2 backing file; a LUN serves as a raw base only");
            case "qcow2":
                FileImageDevice file = FileImageDevice.Open(backingPath, readOnly: true);
                IBlockDevice? next = null;
                try
                {
                    Qcow2Header backingHeader = ReadHeader(file);
                    next = OpenBacking(backingPath, backingHeader, options, depth + 1);
                    return Qcow2Image.Open(file, next, new Qcow2OpenOptions
                    {
                        ReadOnly = true,
                        L2CacheBytes = options.L2CacheBytes,
                        RefcountCacheBytes = options.RefcountCacheBytes,
                    });
                }
                catch
                {
                    next?.Dispose();
                    file.Dispose();
                    throw;
                }
            default:
                throw new StorageException($"qcow2: backing format '{format}' of '{imagePath}' is not supported (raw or qcow2)");
        }
    }
}
