using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>Rebuilding the refcount structure of a dirty image; the allocator itself is <see cref="RefcountAllocator"/>.</summary>
public sealed partial class Qcow2Image
{
    /// <summary>
    /// Rebuilds the refcount structure from the L1/L2 tables (a dirty image, == Header == bit 0): the
    /// new table and blocks go after everything referenced, and the header points to them only once
    /// they are durable. The old structure's clusters come out of the count, so they become free.
    /// </summary>
    private IoStatus RebuildRefcounts()
    {
        Qcow2Header current = _openedHeader with { L1Size = _l1.Size, L1TableOffset = _l1.Offset, RefcountTableOffset = _refcounts.TableOffset, RefcountTableClusters = _refcounts.TableClusters };
        ReferenceCounts counts = ReferenceScanner.Scan(_overlay, current, includeRefcountStructure: false);
        IoStatus status = RefcountStructure.WriteFresh(_overlay, counts.Counts, _clusterBits, _refcounts.RefcountOrder, out long tableOffset, out int tableClusters, out long endCluster);
        if (status != IoStatus.Ok)
        {
            return status;
        }
        lock (_metadataLock)
        {
            status = _refcounts.Replace(tableOffset, tableClusters, endCluster);
        }
        return status == IoStatus.Ok ? WriteHeaderNow() : status;
    }
}
