namespace XenDisk.Cow.Policies;

/// <summary>
/// When an overlay's metadata (L2 tables, refcounts) reaches the disk, chosen per disk. Every policy
/// keeps the same order of writes (data before the L2 entry that points at it; refcounts before the
/// L2 entry; a freed cluster is reused only after the entry that referenced it is gone on disk), so
/// a crash leaves at most leaked clusters. They differ in when the writes happen.
/// </summary>
public enum MetadataPolicy
{
    /// <summary>
    /// Ordered write-back (the default): metadata is written in batches, each dirty block once per
    /// flush. Everything acknowledged before a guest flush is durable when the flush completes.
    /// </summary>
    Flush = 0,

    /// <summary>A write's metadata (and its data) is durable before the write is acknowledged.</summary>
    Sync,

    /// <summary>
    /// Like <see cref="Flush"/>, but refcount blocks are written only when the cache needs room or
    /// the image closes; the dirty bit stays set while the image is open, so a crash is repaired by
    /// rebuilding refcounts on the next open (QEMU's lazy_refcounts).
    /// </summary>
    Lazy,

    /// <summary>
    /// The overlay is thrown away on close: no flush reaches the disk and nothing is written on close.
    /// Flushes return at once; the guest's writes are never durable.
    /// </summary>
    Transient,
}
