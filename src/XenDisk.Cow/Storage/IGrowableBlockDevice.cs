using XenDisk.Storage;

namespace XenDisk.Cow.Storage;

/// <summary>
/// The storage an image file lives in. A qcow2 file grows as clusters are allocated, so the
/// engine needs a way to make the device larger than <see cref="BlockDeviceInfo.SizeBytes"/>; a
/// plain <see cref="IBlockDevice"/> refuses writes beyond its end with <see cref="IoStatus.OutOfRange"/>.
/// </summary>
public interface IGrowableBlockDevice : IBlockDevice
{
    /// <summary>
    /// Grows the device to at least <paramref name="minimumBytes"/> (never shrinks) and updates
    /// <see cref="IBlockDevice.Info"/>. Returns <see cref="IoStatus.NoSpace"/> when the storage is full.
    /// </summary>
    IoStatus EnsureSize(long minimumBytes);
}
