using System.Buffers;
using System.IO.Compression;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

// Writing compressed clusters, as qemu-img convert -c does (== Compressed Clusters Descriptor ==):
// a whole guest cluster is compressed (raw deflate, or zstd when the header's compression_type
// says so) and its data packed after the previous compressed cluster's in the same host cluster.
// Each compressed cluster holds one reference on its host cluster (refcounts count them, and the
// COPIED flag is never set). Data starts on a storage sector boundary, so that every write is
// whole sectors (the files are opened with O_DIRECT), and never spans two host clusters.
public sealed partial class Qcow2Image
{
    /// <summary>The next free byte in the host cluster compressed data is being packed into, or 0 for none.</summary>
    private long _compressedCursor;

    /// <summary>
    /// Writes the guest cluster at <paramref name="offset"/> compressed; <paramref name="data"/> is
    /// the cluster (the disk's last cluster may be shorter: the rest is zeros). The cluster must be
    /// unallocated (a new image, as conversion writes). Data that does not compress below a cluster
    /// is written as a normal cluster, as QEMU does.
    /// </summary>
    public IoStatus WriteCompressed(long offset, ReadOnlySpan<byte> data)
    {
        if (ReadOnly)
        {
            return IoStatus.ReadOnly;
        }
        if ((offset & (_clusterSize - 1)) != 0 || data.Length == 0 || data.Length > _clusterSize || offset > _virtualSize - data.Length)
        {
            return IoStatus.OutOfRange;
        }
        if (_failure != null)
        {
            return IoStatus.IoError;
        }
        if (_extendedL2)
        {
            return RefuseRequest("compressed clusters are not written into images with extended L2 entries");
        }
        byte[] plain = ArrayPool<byte>.Shared.Rent(_clusterSize);
        byte[] packed = ArrayPool<byte>.Shared.Rent(_clusterSize);
        try
        {
            data.CopyTo(plain);
            plain.AsSpan(data.Length, _clusterSize - data.Length).Clear();
            int length = Compress(plain.AsSpan(0, _clusterSize), packed.AsSpan(0, _clusterSize - 1));
            if (length < 0)
            {
                return WriteAt(offset, plain.AsSpan(0, data.Length));
            }
            MarkBitmapsDirty(offset, data.Length);
            long guestCluster = offset >> _clusterBits;
            ReaderWriterLockSlim stripe = StripeFor(guestCluster);
            bool metadataChanged = false;
            IoStatus status;
            EnterExclusive(stripe, guestCluster);
            try
            {
                status = WriteCompressedCluster(guestCluster, packed.AsSpan(0, length), ref metadataChanged);
            }
            finally
            {
                ExitExclusive(stripe, guestCluster);
            }
            return AfterMetadataChange(status, metadataChanged);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(plain);
            ArrayPool<byte>.Shared.Return(packed);
        }
    }

    private IoStatus WriteAt(long offset, ReadOnlySpan<byte> data)
    {
        AlignedBuffer buffer = _scratch.Rent();
        try
        {
            IoBuffer io = new(buffer.Address, data.Length);
            data.CopyTo(io.AsSpan());
            return Write(offset, new ReadOnlySpan<IoBuffer>(in io));
        }
        finally
        {
            _scratch.Return(buffer);
        }
    }

    /// <summary>Compresses a cluster; -1 when the result would not be smaller than <paramref name="output"/>.</summary>
    private int Compress(ReadOnlySpan<byte> cluster, Span<byte> output)
    {
        if (_openedHeader.CompressionType == Qcow2Format.CompressionZstd)
        {
            using ZstdSharp.Compressor zstd = new();
            return zstd.TryWrap(cluster, output, out int written) ? written : -1;
        }
        // Raw deflate (no zlib header), which QEMU inflates in one call over the whole cluster, so
        // back-references may reach as far as the cluster's start.
        byte[] target = ArrayPool<byte>.Shared.Rent(output.Length);
        try
        {
            using MemoryStream stream = new(target, 0, output.Length, writable: true);
            try
            {
                using (DeflateStream deflate = new(stream, new ZLibCompressionOptions { CompressionLevel = 6 }, leaveOpen: true))
                {
                    deflate.Write(cluster);
                }
            }
            catch (NotSupportedException)
            {
                return -1; // the fixed-size stream is full: incompressible
            }
            int length = (int)stream.Position;
            target.AsSpan(0, length).CopyTo(output);
            return length;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(target);
        }
    }

    /// <summary>Places the compressed bytes, writes them, and points the guest cluster's L2 entry at them; the caller holds the stripe.</summary>
    private IoStatus WriteCompressedCluster(long guestCluster, ReadOnlySpan<byte> compressed, ref bool metadataChanged)
    {
        int padded = RoundUpToSector(compressed.Length);
        long host;
        IoStatus status;
        lock (_metadataLock)
        {
            status = LookupEntry(guestCluster, out L2Entry entry);
            if (status == IoStatus.Ok && (entry.Word != 0 || entry.Bitmap != 0))
            {
                return RefuseRequest($"guest cluster {guestCluster} is not unallocated; compressed clusters are written only into new clusters");
            }
            status = AllocateCompressedBytes(padded, out host);
            if (status == IoStatus.Ok)
            {
                status = CheckOverlap(host, padded, MetadataKind.None, "compressed data");
            }
        }
        if (status != IoStatus.Ok)
        {
            return status;
        }
        AlignedBuffer buffer = _scratch.Rent();
        try
        {
            IoBuffer io = new(buffer.Address, padded);
            compressed.CopyTo(io.AsSpan());
            io.AsSpan()[compressed.Length..].Clear();
            status = _overlay.Write(host, new ReadOnlySpan<IoBuffer>(in io));
        }
        finally
        {
            _scratch.Return(buffer);
        }
        lock (_metadataLock)
        {
            if (status == IoStatus.Ok)
            {
                status = GetL2Table(guestCluster, allocate: true, out MetadataCache.Entry? table, out int index);
                if (status == IoStatus.Ok)
                {
                    // x = 62 - (cluster_bits - 8): the host offset below bit x, the additional 512-byte sectors from bit x to 61.
                    int x = 62 - (_clusterBits - 8);
                    ulong sectors = (ulong)(((host + compressed.Length - 1) >> 9) - (host >> 9));
                    _l2.Write(table!, index, new L2Entry(Qcow2Format.OflagCompressed | (sectors << x) | (ulong)host, 0));
                    metadataChanged = true;
                    return IoStatus.Ok;
                }
            }
            _refcounts.DecrementRefcount(host >> _clusterBits);
            return status;
        }
    }

    /// <summary>
    /// <paramref name="bytes"/> (whole sectors) in the host cluster being packed, with one more
    /// reference on it, or at the start of a newly allocated cluster. Under the metadata lock.
    /// </summary>
    private IoStatus AllocateCompressedBytes(int bytes, out long host)
    {
        long used = _compressedCursor & (_clusterSize - 1);
        if (_compressedCursor != 0 && used != 0 && used + bytes <= _clusterSize)
        {
            host = _compressedCursor;
            IoStatus status = _refcounts.GetRefcount(host >> _clusterBits, out ulong refcount);
            if (status == IoStatus.Ok && refcount < _refcounts.MaximumRefcount)
            {
                status = _refcounts.SetRefcount(host >> _clusterBits, refcount + 1);
                if (status == IoStatus.Ok)
                {
                    _compressedCursor = host + bytes;
                }
                return status;
            }
            if (status != IoStatus.Ok)
            {
                return status;
            }
        }
        IoStatus allocated = _refcounts.AllocateCluster(out host);
        _compressedCursor = allocated == IoStatus.Ok ? host + bytes : 0;
        return allocated;
    }
}
