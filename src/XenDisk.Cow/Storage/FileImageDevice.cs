using Microsoft.Win32.SafeHandles;
using XenDisk.Storage;

namespace XenDisk.Cow.Storage;

/// <summary>
/// An image file (a qcow2 overlay or a raw base) opened through the page cache, growable so that an
/// overlay can allocate clusters at its end. Positional I/O, so it is thread-safe.
/// Ownership: the device owns its file handle; <see cref="DeleteOnDispose"/> removes the file when
/// the device is disposed (transient overlays).
/// </summary>
public sealed class FileImageDevice : IGrowableBlockDevice
{
    private readonly SafeFileHandle _handle;
    private readonly FileStream _syncStream;
    private readonly object _growLock = new();
    private BlockDeviceInfo _info;
    private bool _disposed;

    private FileImageDevice(string path, SafeFileHandle handle, bool readOnly)
    {
        Path = path;
        _handle = handle;
        // A FileStream over the handle is the portable way to reach fsync (Flush(flushToDisk: true)).
        _syncStream = new FileStream(handle, readOnly ? FileAccess.Read : FileAccess.ReadWrite, bufferSize: 0);
        // Not RandomAccess.GetLength: it is fstat's st_size, 0 for a block device (an overlay on an LVM volume).
        _info = MakeInfo(RawBlockDevice.SizeOf(handle, path), readOnly);
    }

    public string Path { get; }

    /// <summary>The file's descriptor, borrowed (for <see cref="ImageLocks"/>); the device keeps ownership.</summary>
    internal SafeFileHandle Handle => _handle;

    /// <summary>Delete the file on <see cref="Dispose"/> (for transient overlays).</summary>
    public bool DeleteOnDispose { get; set; }

    public BlockDeviceInfo Info => Volatile.Read(ref _info);

    public bool CompletesInline => false;

    /// <summary>
    /// Opens an existing file and takes QEMU's image locks on it for a reader or a writer (see
    /// <see cref="ImageLocks"/>). Throws <see cref="StorageException"/> naming the path, and the holder when it is locked.
    /// </summary>
    public static FileImageDevice Open(string path, bool readOnly)
    {
        FileImageDevice device;
        try
        {
            SafeFileHandle handle = File.OpenHandle(path, FileMode.Open, readOnly ? FileAccess.Read : FileAccess.ReadWrite,
                readOnly ? FileShare.ReadWrite : FileShare.Read);
            device = new FileImageDevice(path, handle, readOnly);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new StorageException($"cannot open image file '{path}': {e.Message}", inner: e);
        }
        return Locked(device, writable: !readOnly);
    }

    /// <summary>Creates (or truncates) a file. Throws <see cref="StorageException"/> naming the path.</summary>
    public static FileImageDevice Create(string path, bool overwrite = false)
    {
        FileImageDevice device;
        try
        {
            SafeFileHandle handle = File.OpenHandle(path, overwrite ? FileMode.Create : FileMode.CreateNew, FileAccess.ReadWrite, FileShare.Read);
            device = new FileImageDevice(path, handle, readOnly: false);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new StorageException($"cannot create image file '{path}': {e.Message}", inner: e);
        }
        return Locked(device, writable: true);
    }

    private static FileImageDevice Locked(FileImageDevice device, bool writable)
    {
        try
        {
            ImageLocks.Acquire(device.Handle, device.Path, writable);
            return device;
        }
        catch
        {
            device.Dispose();
            throw;
        }
    }

    public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        if (_disposed)
        {
            return IoStatus.IoError;
        }
        // Reads beyond the end of the file return zeros, as pread on a sparse file would: an image's
        // metadata decides what is valid, the file only stores it.
        if (!IoRange.TryGetTotalLength(buffers, out _) || offset < 0)
        {
            return IoStatus.OutOfRange;
        }
        try
        {
            long position = offset;
            foreach (IoBuffer buffer in buffers)
            {
                Span<byte> span = buffer.AsSpan();
                long at = position;
                while (!span.IsEmpty)
                {
                    int read = RandomAccess.Read(_handle, span, at);
                    if (read <= 0)
                    {
                        span.Clear();
                        break;
                    }
                    span = span[read..];
                    at += read;
                }
                position += buffer.Length;
            }
            return IoStatus.Ok;
        }
        catch (IOException)
        {
            return IoStatus.IoError;
        }
    }

    public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers)
    {
        if (_disposed)
        {
            return IoStatus.IoError;
        }
        if (Info.ReadOnly)
        {
            return IoStatus.ReadOnly;
        }
        if (!IoRange.TryGetTotalLength(buffers, out long total) || offset < 0 || offset > Info.SizeBytes || total > Info.SizeBytes - offset)
        {
            return IoStatus.OutOfRange;
        }
        try
        {
            long position = offset;
            foreach (IoBuffer buffer in buffers)
            {
                RandomAccess.Write(_handle, (ReadOnlySpan<byte>)buffer.AsSpan(), position);
                position += buffer.Length;
            }
            return IoStatus.Ok;
        }
        catch (IOException e)
        {
            return IsNoSpace(e) ? IoStatus.NoSpace : IoStatus.IoError;
        }
    }

    public IoStatus Flush()
    {
        if (_disposed)
        {
            return IoStatus.IoError;
        }
        if (Info.ReadOnly)
        {
            return IoStatus.Ok;
        }
        try
        {
            _syncStream.Flush(flushToDisk: true);
            return IoStatus.Ok;
        }
        catch (IOException)
        {
            return IoStatus.IoError;
        }
    }

    /// <summary>Discard is not offered: an image file's holes are managed by the image format above.</summary>
    public IoStatus Discard(long offset, long length, bool secure) => IoStatus.NotSupported;

    public BlockDeviceInfo Refresh()
    {
        lock (_growLock)
        {
            BlockDeviceInfo info = MakeInfo(RawBlockDevice.SizeOf(_handle, Path), Info.ReadOnly);
            Volatile.Write(ref _info, info);
            return info;
        }
    }

    public IoStatus EnsureSize(long minimumBytes)
    {
        if (Info.ReadOnly)
        {
            return IoStatus.ReadOnly;
        }
        lock (_growLock)
        {
            if (minimumBytes <= _info.SizeBytes)
            {
                return IoStatus.Ok;
            }
            try
            {
                RandomAccess.SetLength(_handle, minimumBytes);
                Volatile.Write(ref _info, MakeInfo(minimumBytes, readOnly: false));
                return IoStatus.Ok;
            }
            catch (IOException e)
            {
                return IsNoSpace(e) ? IoStatus.NoSpace : IoStatus.IoError;
            }
        }
    }

    /// <summary>Sets the file's length, shrinking it too (a raw image's resize; overlays only ever grow through <see cref="EnsureSize"/>).</summary>
    public IoStatus SetLength(long length)
    {
        if (Info.ReadOnly)
        {
            return IoStatus.ReadOnly;
        }
        lock (_growLock)
        {
            try
            {
                RandomAccess.SetLength(_handle, length);
                Volatile.Write(ref _info, MakeInfo(length, readOnly: false));
                return IoStatus.Ok;
            }
            catch (IOException e)
            {
                return IsNoSpace(e) ? IoStatus.NoSpace : IoStatus.IoError;
            }
        }
    }

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        _syncStream.Dispose();
        _handle.Dispose();
        if (DeleteOnDispose)
        {
            try
            {
                File.Delete(Path);
            }
            catch (IOException)
            {
                // A transient overlay that cannot be removed is only wasted space; the next start overwrites it.
            }
        }
    }

    private BlockDeviceInfo MakeInfo(long size, bool readOnly) => new()
    {
        SizeBytes = size,
        ReadOnly = readOnly,
        HasVolatileCache = true,
        Description = $"image file {Path}",
    };

    // ENOSPC (28) and EDQUOT (122) surface as IOException with the errno in HResult on Unix.
    private static bool IsNoSpace(IOException e) => (e.HResult & 0xFFFF) is 28 or 122;
}
