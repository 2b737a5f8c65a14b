using System.Buffers.Binary;
using System.Runtime.InteropServices;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

// Persistent dirty bitmaps kept up to date while the image is writable, as QEMU keeps them
// (docs/interop/qcow2.txt === Bitmaps extension ===, == Bitmaps ==):
// - at open, every consistent bitmap is read into memory and gets the in_use flag on disk, so that
//   a crash leaves it marked inconsistent rather than silently stale; the directory is updated in
//   place with the autoclear bit cleared around the update, so a torn update only drops the bitmaps;
// - every write, discard or zeroing sets the bits of the granules it touches in each enabled
//   ("auto") bitmap, with an atomic OR and no allocation;
// - on close the bitmaps are stored: new data clusters (all-zero clusters get no cluster, table
//   entry 0), new tables and a new directory are written and made durable, then the header points
//   to the new directory with the autoclear bit set, and only then are the old clusters freed.
// A bitmap whose in_use flag was already set when the image was opened is inconsistent: it is kept
// untouched and reported, and can only be removed. An image whose extension is present but whose
// autoclear bit is clear was written by a program that ignores bitmaps: like QEMU, the extension is
// ignored (its clusters leak until a repair).
public sealed partial class Qcow2Image
{
    private readonly List<PersistentBitmap> _bitmaps = [];
    private PersistentBitmap[] _trackingBitmaps = [];
    private readonly Dictionary<PersistentBitmap, List<(long Offset, MetadataKind Kind)>> _bitmapClusters = [];
    private readonly List<(long Offset, MetadataKind Kind)> _droppedBitmapClusters = [];
    private long _bitmapDirectoryOffset;
    private long _bitmapDirectorySize;
    private bool _bitmapsManaged;
    private bool _bitmapsChanged;

    /// <summary>
    /// The persistent bitmaps this image maintains (writable images whose bitmaps extension is
    /// consistent), in directory order; empty for read-only images (read those with <see cref="ReadBitmaps"/>).
    /// </summary>
    public IReadOnlyList<PersistentBitmap> Bitmaps
    {
        get
        {
            lock (_metadataLock)
            {
                return [.. _bitmaps];
            }
        }
    }

    /// <summary>
    /// The bitmaps of an image file as stored (no in_use flag is set): names, flags and granularity,
    /// and the bits of consistent ones. Empty when the image has no extension or its autoclear bit is clear.
    /// Throws <see cref="StorageException"/> for a directory QEMU would refuse.
    /// </summary>
    public static IReadOnlyList<PersistentBitmap> ReadBitmaps(IBlockDevice device, Qcow2Header header, bool withBits = true)
    {
        if (header.Bitmaps is not { } extension || header.Version < 3 || (header.AutoclearFeatures & Qcow2Format.AutoclearBitmaps) == 0)
        {
            return [];
        }
        List<PersistentBitmap> bitmaps = ParseDirectory(device, header, extension.DirectoryOffset, extension.DirectorySize, extension.Count);
        foreach (PersistentBitmap bitmap in bitmaps.Where(b => withBits && !b.Inconsistent))
        {
            ThrowIfFailed(LoadBits(device, header.ClusterBits, header.VirtualSize, bitmap, null), $"reading bitmap '{bitmap.Name}'");
        }
        return bitmaps;
    }

    private static List<PersistentBitmap> ParseDirectory(IBlockDevice device, Qcow2Header header, long offset, long size, int count)
    {
        byte[] directory = new byte[size];
        ThrowIfFailed(DeviceIo.ReadBytes(device, offset, directory), "reading the bitmap directory");
        try
        {
            return BitmapDirectory.Parse(directory, count, header.VirtualSize, header.ClusterBits);
        }
        catch (FormatException e)
        {
            throw Qcow2HeaderReader.Refuse(e.Message);
        }
    }

    /// <summary>
    /// Reads a bitmap's table and data into memory (== Bitmap table ==: an entry is 0 for a cluster
    /// of zeros, 1 for a cluster of ones, or the offset of a data cluster). Records the clusters it
    /// occupies in <paramref name="clusters"/> when given.
    /// </summary>
    private static IoStatus LoadBits(IBlockDevice device, int clusterBits, long virtualSize, PersistentBitmap bitmap, List<(long, MetadataKind)>? clusters)
    {
        int clusterSize = 1 << clusterBits;
        byte[] table = new byte[(long)bitmap.TableEntries * 8];
        IoStatus status = DeviceIo.ReadBytes(device, bitmap.TableOffset, table);
        if (status != IoStatus.Ok)
        {
            return status;
        }
        for (long c = 0; c < ((long)table.Length + clusterSize - 1) >> clusterBits; c++)
        {
            clusters?.Add((bitmap.TableOffset + (c << clusterBits), MetadataKind.BitmapTable));
        }
        long bits = (virtualSize + bitmap.Granularity - 1) >> bitmap.GranularityBits;
        long[]? words = bitmap.Inconsistent ? null : new long[(bits + 63) / 64];
        Span<byte> bytes = words == null ? [] : MemoryMarshal.AsBytes(words.AsSpan());
        long fileSize = device.Info.SizeBytes;
        for (int i = 0; i < bitmap.TableEntries; i++)
        {
            ulong entry = BinaryPrimitives.ReadUInt64BigEndian(table.AsSpan(i * 8));
            long data = (long)(entry & Qcow2Format.OffsetMask);
            long start = (long)i << clusterBits;
            Span<byte> part = start < bytes.Length ? bytes.Slice((int)start, (int)Math.Min(clusterSize, bytes.Length - start)) : [];
            if (data == 0)
            {
                if ((entry & 1) != 0)
                {
                    part.Fill(0xff);
                }
                continue;
            }
            if ((data & (clusterSize - 1)) != 0 || data > fileSize - clusterSize)
            {
                return IoStatus.IoError;
            }
            clusters?.Add((data, MetadataKind.BitmapData));
            if (!part.IsEmpty)
            {
                status = DeviceIo.ReadBytes(device, data, part);
                if (status != IoStatus.Ok)
                {
                    return status;
                }
            }
        }
        bitmap.Words = words;
        return IoStatus.Ok;
    }

    /// <summary>
    /// At a writable open, after unknown autoclear bits are cleared: loads the bitmaps and marks the
    /// consistent ones in use on disk (QEMU's qcow2_load_dirty_bitmaps with its in-place directory update).
    /// </summary>
    private void LoadBitmapsForWriting()
    {
        if (_openedHeader.Bitmaps is not { } extension || (_autoclear & Qcow2Format.AutoclearBitmaps) == 0)
        {
            return;
        }
        List<PersistentBitmap> bitmaps = ParseDirectory(_overlay, _openedHeader, extension.DirectoryOffset, extension.DirectorySize, extension.Count);
        foreach (PersistentBitmap bitmap in bitmaps)
        {
            List<(long, MetadataKind)> clusters = [];
            ThrowIfFailed(LoadBits(_overlay, _clusterBits, _virtualSize, bitmap, clusters), $"reading bitmap '{bitmap.Name}'");
            _bitmapClusters[bitmap] = clusters;
        }
        _bitmaps.AddRange(bitmaps);
        _bitmapDirectoryOffset = extension.DirectoryOffset;
        _bitmapDirectorySize = extension.DirectorySize;
        _bitmapsManaged = true;
        UpdateTracking();
        if (bitmaps.All(b => b.Inconsistent))
        {
            return;
        }
        foreach (PersistentBitmap bitmap in bitmaps.Where(b => !b.Inconsistent))
        {
            bitmap.Flags |= BitmapDirectory.FlagInUse;
        }
        // The directory is rewritten in place only while the autoclear bit is clear: a torn write
        // then leaves bitmaps that every reader ignores, never a directory that is trusted and wrong.
        _autoclear &= ~Qcow2Format.AutoclearBitmaps;
        ThrowIfFailed(WriteHeaderNow(), "clearing the bitmaps bit before marking bitmaps in use");
        using AlignedBlock directory = new(ClustersFor(_bitmapDirectorySize) << _clusterBits);
        BitmapDirectory.Serialize(_bitmaps, directory.Span);
        ThrowIfFailed(WriteBitmapArea(_bitmapDirectoryOffset, directory, _bitmapDirectorySize, MetadataKind.BitmapDirectory, "the bitmap directory"), "marking bitmaps in use");
        ThrowIfFailed(_overlay.Flush(), "flushing the bitmap directory");
        _autoclear |= Qcow2Format.AutoclearBitmaps;
        ThrowIfFailed(WriteHeaderNow(), "setting the bitmaps bit");
        _bitmapsChanged = true;
    }

    /// <summary>
    /// Writes the first <paramref name="length"/> bytes of a bitmap structure, rounded up to whole
    /// sectors (the rest of its cluster is zeros in the block), after the overlap check. A structure
    /// QEMU wrote last in the file may end before its cluster does, so no more than that is written.
    /// </summary>
    private IoStatus WriteBitmapArea(long offset, AlignedBlock block, long length, MetadataKind kind, string what)
    {
        int bytes = Math.Min(block.Length, RoundUpToSector(length));
        lock (_metadataLock)
        {
            IoStatus overlap = CheckOverlap(offset, bytes, kind, what);
            if (overlap != IoStatus.Ok)
            {
                return overlap;
            }
        }
        _statistics.CountMetadataWrites(1);
        return DeviceIo.Write(_overlay, offset, block, 0, bytes);
    }

    private void UpdateTracking()
    {
        Volatile.Write(ref _trackingBitmaps, _bitmaps.Where(b => b.Enabled && !b.Inconsistent && b.Words != null).ToArray());
    }

    /// <summary>A write, discard or zeroing of [offset, offset + length): dirty in every enabled bitmap (before the data lands, so it is never missed).</summary>
    private void MarkBitmapsDirty(long offset, long length)
    {
        PersistentBitmap[] tracking = Volatile.Read(ref _trackingBitmaps);
        foreach (PersistentBitmap bitmap in tracking)
        {
            bitmap.MarkDirty(offset, length);
        }
    }

    /// <summary>
    /// Stores the bitmaps (QEMU's qcow2_store_persistent_dirty_bitmaps): the caller holds the
    /// write-back lock and has written back all other metadata. Old clusters are queued for freeing
    /// once the header no longer references them.
    /// </summary>
    private IoStatus StoreBitmaps()
    {
        if (!_bitmapsManaged || !_bitmapsChanged)
        {
            return IoStatus.Ok;
        }
        List<(long Offset, MetadataKind Kind)> retired = [.. _droppedBitmapClusters];
        Dictionary<PersistentBitmap, List<(long, MetadataKind)>> stored = [];
        IoStatus status = IoStatus.Ok;
        using AlignedBlock chunk = new(_clusterSize);
        foreach (PersistentBitmap bitmap in _bitmaps)
        {
            if (bitmap.Inconsistent || bitmap.Words == null)
            {
                continue;
            }
            List<(long, MetadataKind)> clusters = [];
            stored[bitmap] = clusters;
            long entries = BitmapDirectory.TableEntriesFor(_virtualSize, bitmap.GranularityBits, _clusterBits);
            using AlignedBlock table = new(ClustersFor(entries * 8) << _clusterBits);
            ReadOnlySpan<byte> bytes = MemoryMarshal.AsBytes(bitmap.Words.AsSpan());
            for (long i = 0; i < entries && status == IoStatus.Ok; i++)
            {
                long start = i << _clusterBits;
                ReadOnlySpan<byte> part = start < bytes.Length ? bytes.Slice((int)start, (int)Math.Min(_clusterSize, bytes.Length - start)) : [];
                if (!part.ContainsAnyExcept((byte)0))
                {
                    continue; // entry 0: a cluster of zeros, no data cluster
                }
                long data;
                lock (_metadataLock)
                {
                    status = _refcounts.AllocateCluster(out data);
                    if (status != IoStatus.Ok)
                    {
                        break;
                    }
                    _metadata.Add(data >> _clusterBits, 1, MetadataKind.BitmapData);
                }
                clusters.Add((data, MetadataKind.BitmapData));
                chunk.Span.Clear();
                part.CopyTo(chunk.Span);
                status = WriteBitmapArea(data, chunk, _clusterSize, MetadataKind.BitmapData, $"data of bitmap '{bitmap.Name}'");
                BinaryPrimitives.WriteUInt64BigEndian(table.Span[(int)(i * 8)..], (ulong)data);
            }
            if (status != IoStatus.Ok)
            {
                break;
            }
            status = AllocateBitmapStructure(table, MetadataKind.BitmapTable, clusters, out long tableOffset);
            if (status == IoStatus.Ok)
            {
                status = WriteBitmapArea(tableOffset, table, entries * 8, MetadataKind.BitmapTable, $"the table of bitmap '{bitmap.Name}'");
            }
            if (status != IoStatus.Ok)
            {
                break;
            }
            bitmap.TableOffset = tableOffset;
            bitmap.TableEntries = (uint)entries;
        }
        long directoryOffset = 0;
        long directorySize = BitmapDirectory.SizeOf(_bitmaps);
        List<(long, MetadataKind)> directoryClusters = [];
        if (status == IoStatus.Ok && _bitmaps.Count > 0)
        {
            using AlignedBlock directory = new(ClustersFor(directorySize) << _clusterBits);
            foreach (PersistentBitmap bitmap in stored.Keys)
            {
                bitmap.Flags &= ~BitmapDirectory.FlagInUse;
            }
            BitmapDirectory.Serialize(_bitmaps, directory.Span);
            status = AllocateBitmapStructure(directory, MetadataKind.BitmapDirectory, directoryClusters, out directoryOffset);
            if (status == IoStatus.Ok)
            {
                status = WriteBitmapArea(directoryOffset, directory, directorySize, MetadataKind.BitmapDirectory, "the bitmap directory");
            }
        }
        // The new structures and their refcounts are durable before the header points to them.
        if (status == IoStatus.Ok)
        {
            status = WriteBackCore(forGuestFlush: true, forceRefcounts: true);
        }
        if (status != IoStatus.Ok)
        {
            // The header still points to the old directory (with the in_use flags): the bitmaps are
            // reported inconsistent, as after a crash; the clusters written here leak.
            return status == IoStatus.Ok ? IoStatus.IoError : status;
        }
        for (int i = 0; i < ClustersFor(_bitmapDirectorySize) && _bitmapDirectorySize > 0; i++)
        {
            retired.Add((_bitmapDirectoryOffset + ((long)i << _clusterBits), MetadataKind.BitmapDirectory));
        }
        foreach (PersistentBitmap bitmap in stored.Keys)
        {
            if (_bitmapClusters.TryGetValue(bitmap, out List<(long, MetadataKind)>? old))
            {
                retired.AddRange(old);
            }
        }
        lock (_metadataLock)
        {
            _autoclear = _bitmaps.Count > 0 ? _autoclear | Qcow2Format.AutoclearBitmaps : _autoclear & ~Qcow2Format.AutoclearBitmaps;
            status = RewriteBitmapsExtension(_bitmaps.Count, directorySize, directoryOffset, out int headerBytes);
            if (status == IoStatus.Ok)
            {
                UpdateHeaderFields();
            }
            if (status == IoStatus.Ok)
            {
                status = DeviceIo.Write(_overlay, 0, _header, 0, headerBytes);
                _statistics.CountMetadataWrites(1);
            }
        }
        if (status == IoStatus.Ok)
        {
            status = _overlay.Flush();
            _statistics.CountMetadataFlush();
        }
        if (status != IoStatus.Ok)
        {
            return Fail(status, "writing the header for the stored bitmaps");
        }
        lock (_metadataLock)
        {
            _bitmapDirectoryOffset = directoryOffset;
            _bitmapDirectorySize = _bitmaps.Count > 0 ? directorySize : 0;
            foreach ((PersistentBitmap bitmap, List<(long, MetadataKind)> clusters) in stored)
            {
                _bitmapClusters[bitmap] = clusters;
            }
            foreach ((long offset, MetadataKind kind) in retired)
            {
                _metadata.Remove(offset >> _clusterBits, 1, kind);
                _refcounts.FreeAfterWriteBack(offset);
            }
            _droppedBitmapClusters.Clear();
            _bitmapsChanged = false;
        }
        return IoStatus.Ok;
    }

    private IoStatus AllocateBitmapStructure(AlignedBlock block, MetadataKind kind, List<(long, MetadataKind)> clusters, out long offset)
    {
        offset = 0;
        int count = block.Length >> _clusterBits;
        lock (_metadataLock)
        {
            IoStatus status = _refcounts.AllocateContiguous(count, out long first);
            if (status != IoStatus.Ok)
            {
                return status;
            }
            _metadata.Add(first, count, kind);
            offset = first << _clusterBits;
        }
        for (int i = 0; i < count; i++)
        {
            clusters.Add((offset + ((long)i << _clusterBits), kind));
        }
        return IoStatus.Ok;
    }

    /// <summary>
    /// Sets the bitmaps extension in the in-memory header cluster to the given values, or removes it
    /// when <paramref name="count"/> is 0 (=== Bitmaps extension ===). Under the metadata lock.
    /// </summary>
    private IoStatus RewriteBitmapsExtension(int count, long directorySize, long directoryOffset, out int bytesToWrite)
    {
        bytesToWrite = 0;
        List<(uint Type, byte[] Data)> extensions = HeaderExtensions.Parse(_header.Span, out _);
        int at = extensions.FindIndex(e => e.Type == Qcow2Format.ExtensionBitmaps);
        if (at >= 0)
        {
            extensions.RemoveAt(at);
        }
        if (count > 0)
        {
            extensions.Insert(at >= 0 ? at : extensions.Count, (Qcow2Format.ExtensionBitmaps, BitmapsExtension(count, directorySize, directoryOffset)));
        }
        int changed = HeaderExtensions.Rebuild(_header.Span, _openedHeader.Version, extensions);
        if (changed < 0)
        {
            return RefuseRequest("the header extensions and backing file name do not fit in the header cluster");
        }
        bytesToWrite = Math.Min(_clusterSize, RoundUpToSector(changed));
        return IoStatus.Ok;
    }

    private static byte[] BitmapsExtension(int count, long directorySize, long directoryOffset)
    {
        byte[] data = new byte[Qcow2Format.BitmapsExtensionLength];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)count);
        BinaryPrimitives.WriteUInt64BigEndian(data.AsSpan(8), (ulong)directorySize);
        BinaryPrimitives.WriteUInt64BigEndian(data.AsSpan(16), (ulong)directoryOffset);
        return data;
    }
}

// Bitmap management (qemu-img bitmap): changes are made in memory and stored on close, as QEMU does.
public sealed partial class Qcow2Image
{
    /// <summary>QEMU's default granularity for a new bitmap: the cluster size, at least 4 KiB.</summary>
    public long DefaultBitmapGranularity => Math.Max(4096, _clusterSize);

    /// <summary>Adds an empty bitmap (qemu-img bitmap --add). Fails with <see cref="LastError"/> set.</summary>
    public IoStatus AddBitmap(string name, long granularity, bool enabled = true)
    {
        lock (_metadataLock)
        {
            IoStatus status = CheckBitmapChange();
            if (status != IoStatus.Ok)
            {
                return status;
            }
            int nameBytes = System.Text.Encoding.UTF8.GetByteCount(name);
            if (nameBytes is 0 or > BitmapDirectory.MaximumNameLength)
            {
                return RefuseRequest($"a bitmap name is 1 to {BitmapDirectory.MaximumNameLength} bytes");
            }
            if (_bitmaps.Any(b => b.Name == name))
            {
                return RefuseRequest($"bitmap '{name}' already exists");
            }
            if (_bitmaps.Count >= Qcow2Format.MaximumBitmaps)
            {
                return RefuseRequest($"the image already has {Qcow2Format.MaximumBitmaps} bitmaps");
            }
            int bits = granularity > 0 && (granularity & (granularity - 1)) == 0 ? System.Numerics.BitOperations.Log2((ulong)granularity) : -1;
            if (bits is < BitmapDirectory.MinimumGranularityBits or > BitmapDirectory.MaximumGranularityBits)
            {
                return RefuseRequest($"granularity {granularity} is not a power of two from 512 to 2 GiB");
            }
            long entries = BitmapDirectory.TableEntriesFor(_virtualSize, bits, _clusterBits);
            if ((entries << _clusterBits) > BitmapDirectory.MaximumDataBytes)
            {
                return RefuseRequest($"granularity {granularity} needs more than {BitmapDirectory.MaximumDataBytes >> 20} MiB of bitmap for this disk; choose a larger one");
            }
            if (BitmapDirectory.SizeOf(_bitmaps) + BitmapDirectory.EntryLength(nameBytes) > Qcow2Format.MaximumBitmapDirectorySize)
            {
                return RefuseRequest("the bitmap directory would exceed its maximum size");
            }
            long words = (((_virtualSize + (1L << bits) - 1) >> bits) + 63) / 64;
            PersistentBitmap bitmap = new(name, enabled ? BitmapDirectory.FlagAuto : 0, bits, 0, 0) { Words = new long[words] };
            _bitmaps.Add(bitmap);
            _bitmapClusters[bitmap] = [];
            return BitmapsChanged();
        }
    }

    /// <summary>Removes a bitmap, consistent or not (qemu-img bitmap --remove); its clusters are freed when the bitmaps are stored.</summary>
    public IoStatus RemoveBitmap(string name)
    {
        lock (_metadataLock)
        {
            IoStatus status = FindBitmap(name, allowInconsistent: true, out PersistentBitmap? bitmap);
            if (status != IoStatus.Ok)
            {
                return status;
            }
            _bitmaps.Remove(bitmap!);
            if (_bitmapClusters.Remove(bitmap!, out List<(long, MetadataKind)>? clusters))
            {
                _droppedBitmapClusters.AddRange(clusters);
            }
            return BitmapsChanged();
        }
    }

    /// <summary>Clears every bit (qemu-img bitmap --clear).</summary>
    public IoStatus ClearBitmap(string name)
    {
        lock (_metadataLock)
        {
            IoStatus status = FindBitmap(name, allowInconsistent: false, out PersistentBitmap? bitmap);
            if (status != IoStatus.Ok)
            {
                return status;
            }
            Array.Clear(bitmap!.Words!);
            return BitmapsChanged();
        }
    }

    /// <summary>Marks the given ranges dirty in the bitmap (qemu-img bitmap --merge: the source's dirty ranges, whatever its granularity).</summary>
    public IoStatus MergeIntoBitmap(string name, IEnumerable<(long Offset, long Length)> dirty)
    {
        lock (_metadataLock)
        {
            IoStatus status = FindBitmap(name, allowInconsistent: false, out PersistentBitmap? bitmap);
            if (status != IoStatus.Ok)
            {
                return status;
            }
            foreach ((long offset, long length) in dirty)
            {
                bitmap!.MarkDirty(offset, Math.Min(length, _virtualSize - offset));
            }
            return BitmapsChanged();
        }
    }

    /// <summary>Sets or clears the auto flag (qemu-img bitmap --enable / --disable).</summary>
    public IoStatus SetBitmapEnabled(string name, bool enabled)
    {
        lock (_metadataLock)
        {
            IoStatus status = FindBitmap(name, allowInconsistent: false, out PersistentBitmap? bitmap);
            if (status != IoStatus.Ok)
            {
                return status;
            }
            bitmap!.Flags = enabled ? bitmap.Flags | BitmapDirectory.FlagAuto : bitmap.Flags & ~BitmapDirectory.FlagAuto;
            return BitmapsChanged();
        }
    }

    private IoStatus CheckBitmapChange()
    {
        if (ReadOnly)
        {
            return RefuseRequest(ReadOnlyReason ?? "the image is open read-only");
        }
        if (_policy == MetadataPolicy.Transient)
        {
            return RefuseRequest("a transient overlay keeps no persistent bitmaps");
        }
        if (_openedHeader.Version < 3)
        {
            return RefuseRequest("persistent bitmaps need a version 3 image (compat=1.1)");
        }
        return _failure != null ? IoStatus.IoError : IoStatus.Ok;
    }

    private IoStatus FindBitmap(string name, bool allowInconsistent, out PersistentBitmap? bitmap)
    {
        IoStatus status = CheckBitmapChange();
        bitmap = _bitmaps.FirstOrDefault(b => b.Name == name);
        if (status != IoStatus.Ok)
        {
            return status;
        }
        if (bitmap == null)
        {
            return RefuseRequest($"the image has no bitmap '{name}'");
        }
        if (bitmap.Inconsistent && !allowInconsistent)
        {
            return RefuseRequest($"bitmap '{name}' is inconsistent (its in_use flag was set when the image was opened); it can only be removed");
        }
        return IoStatus.Ok;
    }

    private IoStatus BitmapsChanged()
    {
        _bitmapsManaged = true;
        _bitmapsChanged = true;
        UpdateTracking();
        return IoStatus.Ok;
    }
}
