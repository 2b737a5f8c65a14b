namespace XenDisk.Storage;

/// <summary>
/// Storage that an image file lives in and that can be made larger. A qcow2 file grows as clusters
/// are allocated, so the engine needs a way past <see cref="BlockDeviceInfo.SizeBytes"/>; a plain
/// <see cref="IBlockDevice"/> refuses writes beyond its end with <see cref="IoStatus.OutOfRange"/>.
/// </summary>
public interface IGrowableBlockDevice : IBlockDevice
{
    /// <summary>
    /// Grows the device to at least <paramref name="minimumBytes"/> (never shrinks) and updates
    /// <see cref="IBlockDevice.Info"/>. Returns <see cref="IoStatus.NoSpace"/> when the storage is full
    /// or cannot grow (a block device). An implementation may grow further than asked (preallocation);
    /// bytes past the largest size asked for are never relied upon by the caller.
    /// </summary>
    IoStatus EnsureSize(long minimumBytes);
}
