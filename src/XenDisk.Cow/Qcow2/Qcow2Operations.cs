using XenDisk.Cow.Policies;
using XenDisk.Cow.Storage;
using XenDisk.Storage;
using XenDisk.Cow.Overlays;

namespace XenDisk.Cow.Qcow2;

/// <summary>
/// Image operations on qcow2 files that are not attached to a guest, for tools: hydrate, commit,
/// external snapshot and rebase. Each opens the image (and the backing files
/// <see cref="Qcow2FileOptions.BackingPolicy"/> allows), runs the operation on <see cref="Qcow2Image"/>,
/// and closes everything cleanly. Failures throw <see cref="StorageException"/> with a message for
/// an operator; cancellation throws <see cref="OperationCanceledException"/> after leaving the image
/// consistent. For an attached disk call the <see cref="Qcow2Image"/> methods on the open image instead.
/// </summary>
public static class Qcow2Operations
{
    /// <summary>
    /// Copies everything the image still reads from its backing chain into it and removes the
    /// backing link (see <see cref="Qcow2Image.Hydrate"/>). Resumable: run it again after an interruption.
    /// </summary>
    public static OverlayOperationResult Hydrate(string imagePath, Qcow2HydrateOptions? options = null, Qcow2FileOptions? files = null, CancellationToken cancellationToken = default)
    {
        files ??= new Qcow2FileOptions();
        using Qcow2Image image = Qcow2Disk.Open(imagePath, new Qcow2OpenOptions { Policy = files.Policy, BackingPolicy = files.BackingPolicy });
        OverlayOperationResult result = image.Hydrate(options, cancellationToken);
        return Finish(image, result, "hydrating", imagePath);
    }

    /// <summary>
    /// Writes the image's data into its backing file, opened writable (raw, or qcow2 with its own
    /// chain read-only), and with <see cref="Qcow2CommitOptions.EmptyOverlay"/> empties the image
    /// (see <see cref="Qcow2Image.Commit"/>). Every other image over the same backing file sees the change.
    /// </summary>
    public static OverlayOperationResult Commit(string imagePath, Qcow2CommitOptions? options = null, Qcow2FileOptions? files = null, CancellationToken cancellationToken = default)
    {
        options ??= new Qcow2CommitOptions();
        files ??= new Qcow2FileOptions();
        string fullPath = Path.GetFullPath(imagePath);
        FileImageDevice overlay = FileImageDevice.Open(fullPath, readOnly: !options.EmptyOverlay);
        IBlockDevice? backing = null;
        Qcow2Image image;
        try
        {
            Qcow2Header header = Qcow2Disk.ReadHeader(overlay);
            if (header.BackingFile == null)
            {
                throw new StorageException($"qcow2: '{fullPath}' has no backing file to commit into");
            }
            (string backingPath, string format) = AuthoriseBacking(fullPath, header.BackingFile, header.BackingFormat, files.BackingPolicy);
            backing = OpenLayer(backingPath, format, readOnly: false, files);
            image = Qcow2Image.Open(overlay, backing, new Qcow2OpenOptions { Policy = files.Policy, ReadOnly = !options.EmptyOverlay });
        }
        catch
        {
            backing?.Dispose();
            overlay.Dispose();
            throw;
        }
        using (image)
        {
            OverlayOperationResult result;
            try
            {
                result = image.Commit(options, cancellationToken);
            }
            catch (InvalidOperationException e)
            {
                throw new StorageException($"qcow2: committing '{fullPath}': {e.Message}", inner: e);
            }
            return Finish(image, result, "committing", fullPath);
        }
    }

    /// <summary>
    /// Freezes <paramref name="imagePath"/> by stacking a new, empty qcow2 overlay on it at
    /// <paramref name="newOverlayPath"/> (backing format qcow2, same virtual size). From now on the
    /// guest's disk is the new overlay and the frozen image is only ever opened read-only, as a
    /// backing file. The frozen image must not be open for writing; this is checked only as far as the
    /// dirty bit tells (lazy refcounts). Throws <see cref="StorageException"/> when the new file exists.
    /// </summary>
    public static void Snapshot(string imagePath, string newOverlayPath, Qcow2SnapshotOptions? options = null)
    {
        options ??= new Qcow2SnapshotOptions();
        string frozen = Path.GetFullPath(imagePath);
        string top = Path.GetFullPath(newOverlayPath);
        if (frozen == top)
        {
            throw new StorageException($"qcow2: the new overlay '{top}' would be its own backing file");
        }
        Qcow2Header header;
        using (FileImageDevice device = FileImageDevice.Open(frozen, readOnly: true))
        {
            header = Qcow2Disk.ReadHeader(device);
        }
        if (header.Corrupt)
        {
            throw new StorageException($"qcow2: '{frozen}' is marked corrupt; repair it before stacking an overlay on it");
        }
        if (header.Dirty)
        {
            throw new StorageException($"qcow2: '{frozen}' has the dirty bit set: it is open for writing or was not closed cleanly (check it with repair first)");
        }
        string name = options.BackingName
            ?? (Path.GetDirectoryName(frozen) == Path.GetDirectoryName(top) ? Path.GetFileName(frozen) : frozen);
        if (Qcow2Disk.ResolveBackingPath(top, name) != frozen)
        {
            throw new StorageException($"qcow2: the backing name '{name}' stored in '{top}' would not lead to '{frozen}'");
        }
        try
        {
            Qcow2Disk.Create(top, new Qcow2CreateOptions
            {
                VirtualSize = header.VirtualSize,
                ClusterSize = options.ClusterSize > 0 ? options.ClusterSize : header.ClusterSize,
                ExtendedL2 = options.ExtendedL2,
                BackingFile = name,
                BackingFormat = "qcow2",
            });
        }
        catch (ArgumentException e)
        {
            throw new StorageException($"qcow2: cannot create '{top}': {e.Message}", inner: e);
        }
    }

    /// <summary>
    /// Changes the backing file of <paramref name="imagePath"/> to <paramref name="newBackingFile"/>
    /// (resolved like any backing name: relative to the image's directory) of format
    /// <paramref name="newBackingFormat"/>, or removes it when null or empty. Safe mode (the default)
    /// opens the old chain and the new backing file (both must be allowed by
    /// <see cref="Qcow2FileOptions.BackingPolicy"/>) and copies what differs into the image first;
    /// unsafe mode only rewrites the header (see <see cref="Qcow2Image.Rebase"/>).
    /// </summary>
    public static OverlayOperationResult Rebase(string imagePath, string? newBackingFile, string? newBackingFormat, Qcow2RebaseOptions? options = null, Qcow2FileOptions? files = null, CancellationToken cancellationToken = default)
    {
        options ??= new Qcow2RebaseOptions();
        files ??= new Qcow2FileOptions();
        string fullPath = Path.GetFullPath(imagePath);
        bool hasNew = !string.IsNullOrEmpty(newBackingFile);
        if (hasNew)
        {
            try
            {
                Qcow2Image.ValidateBackingLink(newBackingFile!, newBackingFormat);
            }
            catch (ArgumentException e)
            {
                throw new StorageException($"qcow2: rebasing '{fullPath}': {e.Message}", inner: e);
            }
        }
        if (options.Unsafe)
        {
            if (hasNew)
            {
                // A protocol name is refused even where it is never opened: XenDisk would refuse the image later.
                Qcow2Disk.ResolveBackingPath(fullPath, newBackingFile!);
            }
            FileImageDevice device = FileImageDevice.Open(fullPath, readOnly: false);
            Qcow2Image unsafeImage;
            try
            {
                unsafeImage = Qcow2Image.Open(device, null, new Qcow2OpenOptions { Policy = files.Policy, AllowMissingBacking = true });
            }
            catch
            {
                device.Dispose();
                throw;
            }
            using (unsafeImage)
            {
                return Finish(unsafeImage, unsafeImage.Rebase(null, newBackingFile, newBackingFormat, options, cancellationToken), "rebasing", fullPath);
            }
        }

        IBlockDevice? newBacking = null;
        try
        {
            if (hasNew)
            {
                (string path, string format) = AuthoriseBacking(fullPath, newBackingFile!, newBackingFormat, files.BackingPolicy);
                newBacking = OpenLayer(path, format, readOnly: true, files);
            }
            using Qcow2Image image = Qcow2Disk.Open(fullPath, new Qcow2OpenOptions { Policy = files.Policy, BackingPolicy = files.BackingPolicy });
            OverlayOperationResult result = image.Rebase(newBacking, newBackingFile, newBackingFormat, options, cancellationToken);
            return Finish(image, result, "rebasing", fullPath);
        }
        finally
        {
            newBacking?.Dispose();
        }
    }

    /// <summary>Closes the image cleanly and turns a failure into a <see cref="StorageException"/>.</summary>
    private static OverlayOperationResult Finish(Qcow2Image image, OverlayOperationResult result, string what, string imagePath)
    {
        IoStatus close = image.ReadOnly ? IoStatus.Ok : image.Close();
        if (!result.Succeeded)
        {
            throw new StorageException($"qcow2: {what} '{imagePath}' failed: {result.Error ?? result.Status.ToString()}", result.Status == IoStatus.NoSpace ? 28 : 5);
        }
        if (close != IoStatus.Ok)
        {
            throw new StorageException($"qcow2: closing '{imagePath}' after {what} failed ({close})", close == IoStatus.NoSpace ? 28 : 5);
        }
        return result;
    }

    /// <summary>Resolves a backing name against the image's directory and checks it against the policy.</summary>
    private static (string Path, string Format) AuthoriseBacking(string imagePath, string name, string? format, BackingFilePolicy policy)
    {
        string path = Qcow2Disk.ResolveBackingPath(imagePath, name);
        if (!policy.Allows(path, name))
        {
            throw new StorageException($"qcow2: the backing file '{name}' of '{imagePath}' ({path}) is not allowed by the backing file policy");
        }
        if (format is not ("raw" or "qcow2"))
        {
            throw new StorageException(format == null
                ? $"qcow2: '{imagePath}' names the backing file '{name}' without a backing format; XenDisk never probes formats"
                : $"qcow2: backing format '{format}' of '{imagePath}' is not supported (raw or qcow2)");
        }
        return (path, format);
    }

    /// <summary>Opens one backing layer: a raw file or block device, or a qcow2 image with its own chain (always read-only).</summary>
    private static IBlockDevice OpenLayer(string path, string format, bool readOnly, Qcow2FileOptions files)
    {
        if (format == "raw")
        {
            return ImageLocks.OpenRaw(path, readOnly);
        }
        return Qcow2Disk.Open(path, new Qcow2OpenOptions { ReadOnly = readOnly, Policy = files.Policy, BackingPolicy = files.BackingPolicy });
    }
}
