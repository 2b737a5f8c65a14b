namespace XenDisk.Storage.Tests.Support;

/// <summary>The devices every contract test runs against.</summary>
public enum DeviceKind
{
    /// <summary><see cref="MemoryBlockDevice"/>.</summary>
    Memory,

    /// <summary>A raw image file on the real disk (ext4 or overlay), opened with O_DIRECT.</summary>
    DiskFile,

    /// <summary>A raw image file on tmpfs (/dev/shm): buffered on kernels before 6.6, direct I/O after.</summary>
    TmpfsFile,

    /// <summary>A raw image file on a private ramfs mount, which always refuses O_DIRECT: the buffered fallback.</summary>
    RamfsFile,

    /// <summary>A loop device (512-byte sectors) over an image file.</summary>
    LoopDevice,

    /// <summary>A loop device with 4096-byte logical sectors (losetup --sector-size 4096).</summary>
    LoopDevice4K,

    /// <summary>A qcow2 overlay made by qemu-img over a raw base made by qemu-img, served by the qcow2 engine.</summary>
    Qcow2Overlay,

    /// <summary>A flat bitmap overlay over a raw base made by qemu-img.</summary>
    BitmapOverlay,
}
