namespace XenDisk.Cow.Policies;

/// <summary>
/// When an overlay's metadata (L2 tables, refcounts; a bitmap overlay's map) reaches the file and
/// the disk, chosen per disk. Two kinds of crash matter, and the policies differ in both:
/// <list type="bullet">
/// <item>The service dies (SIGKILL, the OOM killer, an abort) while the host and the guest keep
/// running: the kernel's page cache keeps everything the process wrote into the file. With Sync,
/// Flush and Lazy every answered write is then seen by the next instance.</item>
/// <item>The host loses power: only what a flush made durable is certain. With every policy but
/// Transient, everything answered before the guest's last completed flush survives (with Sync,
/// everything answered), the image opens, and no cluster an entry references is handed out again.</item>
/// </list>
/// Durable write-back keeps one order (data before the entry that points at it; refcounts before
/// the entry; a freed cluster is reused only after the entry that referenced it is gone on disk).
/// </summary>
public enum MetadataPolicy
{
    /// <summary>
    /// Ordered write-back (the default): metadata is made durable in batches, each dirty block once
    /// per guest flush; everything acknowledged before a guest flush is durable when the flush
    /// completes. Before a write that changed the mapping is acknowledged, its L2 tables and L1
    /// entries (a bitmap overlay: its map blocks) are also written into the file, without a flush,
    /// so a crash of the service loses no answered write. While such metadata is not durable, a
    /// qcow2 image carries the dirty bit (set once per open, cleared by a clean close): after a power
    /// loss its refcounts are rebuilt from the L1/L2 tables when it is opened, by XenDisk or QEMU.
    /// Writes the guest did not flush before a power loss may read back as zeros or as older
    /// contents of a reused cluster; sectors it did not write keep their contents (a copy-up is
    /// flushed before the entry that exposes it is written).
    /// </summary>
    Flush = 0,

    /// <summary>A write's metadata (and its data) is durable before the write is acknowledged.</summary>
    Sync,

    /// <summary>
    /// Like <see cref="Flush"/> (the mapping of answered writes is in the file before the answer),
    /// but refcount blocks are written only when the cache needs room or the image closes; the
    /// dirty bit stays set while the image is open, so a crash is repaired by rebuilding refcounts
    /// on the next open (QEMU's lazy_refcounts). A bitmap overlay writes a discard's map change late.
    /// </summary>
    Lazy,

    /// <summary>
    /// The overlay is thrown away on close: no flush reaches the disk and nothing is written on close.
    /// Flushes return at once; the guest's writes are never durable and do not outlive the service.
    /// </summary>
    Transient,
}
