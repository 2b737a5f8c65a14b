using System.Buffers;
using System.IO.Compression;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>
/// Compressed clusters (== Compressed Clusters Descriptor ==), as <c>qemu-img convert -c</c> writes
/// them: read by decompressing the whole cluster (raw deflate, or zstd when the header's
/// compression_type says so); a write into one copies the decompressed cluster up into a newly
/// allocated normal cluster; a discard drops the entry. Compressed data is not cluster aligned and
/// several compressed clusters may share a host cluster, so refcounts are per host cluster spanned:
/// each compressed cluster holds one reference on every host cluster its sectors touch.
/// </summary>
public sealed partial class Qcow2Image
{
    /// <summary>Where a compressed cluster's data lies: the byte offset, the bytes to read, and the host clusters its sectors span.</summary>
    private readonly record struct CompressedExtent(long Offset, int Length, long FirstCluster, long LastCluster);

    /// <summary>
    /// Decodes the descriptor: with x = 62 - (cluster_bits - 8), bits 0..x-1 are the host offset
    /// and bits x..61 the number of additional 512-byte sectors; the data runs from the offset to
    /// the end of the last of those sectors (counted from the sector the offset lies in).
    /// </summary>
    private CompressedExtent DecodeCompressed(L2Entry entry)
    {
        int x = 62 - (_clusterBits - 8);
        long offset = (long)(entry.Word & ((1UL << x) - 1));
        long sectors = (long)((entry.Word >> x) & ((1UL << (62 - x)) - 1)) + 1;
        long start = offset & ~511L;
        long end = start + sectors * 512;
        return new CompressedExtent(offset, (int)(end - offset), start >> _clusterBits, (end - 1) >> _clusterBits);
    }

    /// <summary>
    /// Decompresses <paramref name="entry"/> into <paramref name="cluster"/> (a whole cluster). A
    /// descriptor outside the file or data that does not inflate to exactly one cluster fails the request alone.
    /// </summary>
    private IoStatus ReadCompressed(long guestCluster, L2Entry entry, Span<byte> cluster)
    {
        CompressedExtent extent = DecodeCompressed(entry);
        if (extent.Offset < _clusterSize || extent.Offset >= _overlay.Info.SizeBytes)
        {
            return RefuseRequest($"guest cluster {guestCluster}: its compressed data at 0x{extent.Offset:x} lies outside the file");
        }
        byte[] compressed = ArrayPool<byte>.Shared.Rent(extent.Length);
        try
        {
            // The last sector may run past the end of the file (qemu-img does not pad it); it reads as zeros.
            IoStatus status = DeviceIo.ReadBytes(_overlay, extent.Offset, compressed.AsSpan(0, extent.Length));
            if (status != IoStatus.Ok)
            {
                return status;
            }
            int produced;
            try
            {
                using MemoryStream input = new(compressed, 0, extent.Length, writable: false);
                using Stream decompressor = _openedHeader.CompressionType == Qcow2Format.CompressionZstd
                    ? new ZstdSharp.DecompressionStream(input)
                    : new DeflateStream(input, CompressionMode.Decompress);
                // Compressed data is followed by whatever fills its last sector: stop once the cluster is full.
                produced = 0;
                while (produced < cluster.Length)
                {
                    int read = decompressor.Read(cluster[produced..]);
                    if (read == 0)
                    {
                        break;
                    }
                    produced += read;
                }
            }
            catch (Exception e) when (e is InvalidDataException or IOException or ZstdSharp.ZstdException)
            {
                return RefuseRequest($"guest cluster {guestCluster}: its compressed data at 0x{extent.Offset:x} does not decompress ({e.Message})");
            }
            if (produced != cluster.Length)
            {
                return RefuseRequest($"guest cluster {guestCluster}: its compressed data at 0x{extent.Offset:x} decompresses to {produced} bytes, not a cluster");
            }
            return IoStatus.Ok;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(compressed);
        }
    }

    /// <summary>Reads [start, start + length) of a compressed guest cluster into <paramref name="data"/>.</summary>
    private IoStatus ReadFromCompressed(long guestCluster, L2Entry entry, int start, int length, ReadOnlySpan<IoBuffer> data)
    {
        AlignedBuffer buffer = _scratch.Rent();
        try
        {
            Span<byte> cluster = new IoBuffer(buffer.Address, _clusterSize).AsSpan();
            IoStatus status = ReadCompressed(guestCluster, entry, cluster);
            if (status != IoStatus.Ok)
            {
                return status;
            }
            int position = start;
            foreach (IoBuffer target in data)
            {
                cluster.Slice(position, target.Length).CopyTo(target.AsSpan());
                position += target.Length;
            }
            return IoStatus.Ok;
        }
        finally
        {
            _scratch.Return(buffer);
        }
    }

    /// <summary>
    /// A write into a compressed cluster: the decompressed cluster with the write applied goes into
    /// a newly allocated cluster, and the entry then points at it. The compressed data's host
    /// clusters are released after the new entry is on disk (see <see cref="WriteBackCore"/>).
    /// The caller holds the guest cluster's stripe exclusively.
    /// </summary>
    private IoStatus WriteIntoCompressed(long guestCluster, L2Entry entry, int start, ReadOnlySpan<IoBuffer> data, ref bool metadataChanged)
    {
        AlignedBuffer buffer = _scratch.Rent();
        long host = 0;
        try
        {
            IoBuffer whole = new(buffer.Address, _clusterSize);
            Span<byte> cluster = whole.AsSpan();
            IoStatus status = ReadCompressed(guestCluster, entry, cluster);
            if (status != IoStatus.Ok)
            {
                return status;
            }
            int position = start;
            foreach (IoBuffer source in data)
            {
                source.AsSpan().CopyTo(cluster[position..]);
                position += source.Length;
            }
            lock (_metadataLock)
            {
                status = _refcounts.AllocateCluster(out host);
            }
            if (status != IoStatus.Ok)
            {
                return status;
            }
            status = _overlay.Write(host, new ReadOnlySpan<IoBuffer>(in whole));
            lock (_metadataLock)
            {
                if (status == IoStatus.Ok)
                {
                    status = GetL2Table(guestCluster, allocate: true, out MetadataCache.Entry? table, out int index);
                    if (status == IoStatus.Ok)
                    {
                        // Every subcluster now holds data (the copy-up wrote the whole cluster).
                        ulong bitmap = _extendedL2 ? Qcow2Format.SubclusterAllocationMask : 0;
                        _l2.Write(table!, index, new L2Entry((ulong)host | Qcow2Format.OflagCopied, bitmap));
                        // The cluster holds old data besides the request's: durable before the entry reaches the file.
                        _dataFirstPending = true;
                        QueueCompressedFree(entry);
                        metadataChanged = true;
                        return IoStatus.Ok;
                    }
                }
                _refcounts.ReleaseUnreferenced(host);
                return status;
            }
        }
        finally
        {
            _scratch.Return(buffer);
        }
    }

    /// <summary>Drops one reference on every host cluster the compressed data spans, once the entry that held them is gone on disk (under the metadata lock).</summary>
    private void QueueCompressedFree(L2Entry entry)
    {
        CompressedExtent extent = DecodeCompressed(entry);
        for (long c = extent.FirstCluster; c <= extent.LastCluster; c++)
        {
            _refcounts.FreeAfterWriteBack(c << _clusterBits);
        }
    }
}
