using System.Runtime.InteropServices;
using XenDisk.Cow.Qcow2;
using XenDisk.Storage;

namespace XenDisk.Cow.Storage;

/// <summary>
/// How the engine opens and creates the files that overlays live in when they serve a disk: with
/// O_DIRECT (the guest has its own page cache; dom0's would only double it and hide lost writes
/// until writeback), with their blocks allocated before data lands in them, so that
/// concurrent first writes do not queue behind the file system's block allocation, and with QEMU's
/// image locks held for as long as they are open (<see cref="ImageLocks"/>).
/// </summary>
public static class OverlayFiles
{
    /// <summary>How far a growing qcow2 file is preallocated ahead of its last allocated cluster (see <see cref="RawDeviceOptions.PreallocationStep"/>).</summary>
    public const long QcowPreallocationStep = 32L << 20;

    /// <summary>
    /// Opens a qcow2 overlay file for the engine. Throws <see cref="StorageException"/> naming the path.
    /// <para>
    /// A qcow2 file need not end on a sector boundary: qemu-img creates images whose last table
    /// (an 8-byte L1 table, say) ends mid-sector, and reads past the end return zeros. A sector
    /// device cannot address that tail, so a writable file is first padded with zeros to a whole
    /// sector (what those reads returned anyway) once its header has validated, and a read-only one
    /// is read through the page cache. Throws <see cref="StorageException"/> for a header that does not validate.
    /// </para>
    /// </summary>
    public static IBlockDevice OpenQcow2(string path, bool readOnly)
    {
        const int Sector = 512;
        long length;
        try
        {
            length = new FileInfo(path).Length;
            if (length % Sector != 0 && !readOnly)
            {
                // Only a file whose header validates is padded: an image refused here must be left as it was.
                // The probe is a locked writer, so an image another process holds is refused, not padded.
                using FileImageDevice probe = FileImageDevice.Open(path, readOnly: false);
                Qcow2Disk.ReadHeader(probe);
                IoStatus padded = probe.EnsureSize(length + Sector - length % Sector);
                if (padded != IoStatus.Ok)
                {
                    throw new StorageException($"Cannot pad qcow2 image file {path} to a whole sector: {padded.Describe()}");
                }
                length += Sector - length % Sector;
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new StorageException($"Cannot open qcow2 image file {path}: {e.Message}", inner: e);
        }
        if (length % Sector != 0)
        {
            return FileImageDevice.Open(path, readOnly: true);
        }
        return ImageLocks.OpenRaw(path, readOnly, new RawDeviceOptions { PreallocationStep = readOnly ? 0 : QcowPreallocationStep });
    }

    /// <summary>
    /// Creates a file of <paramref name="size"/> bytes for a flat bitmap overlay, allocated as
    /// <paramref name="preallocation"/> says. Throws <see cref="StorageException"/> naming the path;
    /// the file is removed again on failure.
    /// </summary>
    public static void CreateBitmapFile(string path, long size, FilePreallocation preallocation)
    {
        try
        {
            using (File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None))
            {
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new StorageException($"Cannot create overlay file {path}: {e.Message}", inner: e);
        }
        try
        {
            if (preallocation == FilePreallocation.Off)
            {
                using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite, FileShare.None);
                RandomAccess.SetLength(handle, size);
                return;
            }
            using RawBlockDevice file = ImageLocks.OpenRaw(path, readOnly: false);
            IoStatus status = file.EnsureSize(size);
            if (status == IoStatus.Ok && preallocation == FilePreallocation.Full)
            {
                status = WriteZeros(file, size);
            }
            if (status != IoStatus.Ok)
            {
                throw new StorageException(status == IoStatus.NoSpace
                    ? $"Cannot allocate {size} bytes for overlay file {path}: no space left"
                    : $"Cannot allocate {size} bytes for overlay file {path} ({status.Describe()})");
            }
        }
        catch (Exception e) when (e is StorageException or IOException or UnauthorizedAccessException)
        {
            File.Delete(path);
            throw e as StorageException ?? new StorageException($"Cannot size overlay file {path}: {e.Message}", inner: e);
        }
    }

    /// <summary>Writes zeros over the whole file, so that its extents are written ones (see <see cref="FilePreallocation.Full"/>).</summary>
    private static unsafe IoStatus WriteZeros(RawBlockDevice file, long size)
    {
        const int Chunk = 8 << 20;
        void* zeros = NativeMemory.AlignedAlloc(Chunk, (nuint)AlignedBufferPool.PageSize);
        try
        {
            NativeMemory.Clear(zeros, Chunk);
            for (long at = 0; at < size; at += Chunk)
            {
                IoBuffer buffer = new((nint)zeros, (int)Math.Min(Chunk, size - at));
                IoStatus status = file.Write(at, new ReadOnlySpan<IoBuffer>(in buffer));
                if (status != IoStatus.Ok)
                {
                    return status;
                }
            }
            return file.Flush();
        }
        finally
        {
            NativeMemory.AlignedFree(zeros);
        }
    }
}

/// <summary>How the file under a flat bitmap overlay is allocated when it is created (qemu-img's preallocation= names).</summary>
public enum FilePreallocation
{
    /// <summary>Sparse: space is taken as grains are written; concurrent first writes then wait on the file system's block allocation.</summary>
    Off,

    /// <summary>Blocks allocated with fallocate and no data written: quick to create; a first write into a block still converts it from unwritten.</summary>
    Falloc,

    /// <summary>Zeros written over the whole file: slow to create, and afterwards every write is an overwrite in place, as on a pre-sized block device.</summary>
    Full,
}
