using System.Buffers.Binary;
using System.Text;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>
/// Reads and validates a qcow2 header. The image is untrusted: every field is range-checked before
/// it is used, bounds are compared before anything is multiplied, and each refusal names the
/// problem so an operator can act on it. Throws <see cref="StorageException"/>.
/// </summary>
internal static class Qcow2HeaderReader
{
    /// <summary>Bytes read first: the whole version 3 header fits in one sector.</summary>
    private const int FirstSectorSize = 512;

    /// <summary>Reads the header and its first cluster. The returned block holds the first cluster (zero-padded past the end of the file).</summary>
    public static Qcow2Header Read(IBlockDevice device, out AlignedBlock firstCluster)
    {
        long fileSize = device.Info.SizeBytes;
        if (fileSize < Qcow2Format.HeaderLengthV2)
        {
            throw Refuse($"the file is {fileSize} bytes, too small for a qcow2 header");
        }
        Span<byte> sector = stackalloc byte[FirstSectorSize];
        Check(DeviceIo.ReadBytes(device, 0, sector), "reading the header");
        int clusterBits = ValidateClusterBits(sector);
        int clusterSize = 1 << clusterBits;
        firstCluster = new AlignedBlock(clusterSize);
        try
        {
            Check(DeviceIo.ReadClamped(device, 0, firstCluster), "reading the header cluster");
            return Parse(firstCluster.Span, fileSize, device);
        }
        catch
        {
            firstCluster.Dispose();
            throw;
        }
    }

    private static int ValidateClusterBits(ReadOnlySpan<byte> h)
    {
        uint magic = BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2HeaderField.Magic..]);
        if (magic != Qcow2Format.Magic)
        {
            throw Refuse($"bad magic 0x{magic:x8} (not a qcow2 image; expected 0x{Qcow2Format.Magic:x8} \"QFI\\xfb\")");
        }
        uint version = BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2HeaderField.Version..]);
        if (version is not (2 or 3))
        {
            throw Refuse($"unsupported qcow2 version {version} (versions 2 and 3 are supported)");
        }
        uint clusterBits = BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2HeaderField.ClusterBits..]);
        if (clusterBits is < Qcow2Format.MinimumClusterBits or > Qcow2Format.MaximumClusterBits)
        {
            throw Refuse($"cluster_bits {clusterBits} is out of range (cluster sizes from 512 B to 2 MiB, cluster_bits 9 to 21)");
        }
        return (int)clusterBits;
    }

    /// <summary>Validates a header held in <paramref name="h"/> (the first cluster of a file of <paramref name="fileSize"/> bytes).</summary>
    public static Qcow2Header Parse(ReadOnlySpan<byte> h, long fileSize, IBlockDevice device)
    {
        int clusterBits = ValidateClusterBits(h);
        int clusterSize = 1 << clusterBits;
        int version = (int)BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2HeaderField.Version..]);
        ulong backingOffset = BinaryPrimitives.ReadUInt64BigEndian(h[Qcow2HeaderField.BackingFileOffset..]);
        uint backingSize = BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2HeaderField.BackingFileSize..]);
        ulong virtualSize = BinaryPrimitives.ReadUInt64BigEndian(h[Qcow2HeaderField.Size..]);
        uint cryptMethod = BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2HeaderField.CryptMethod..]);
        uint l1Size = BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2HeaderField.L1Size..]);
        ulong l1Offset = BinaryPrimitives.ReadUInt64BigEndian(h[Qcow2HeaderField.L1TableOffset..]);
        ulong refcountTableOffset = BinaryPrimitives.ReadUInt64BigEndian(h[Qcow2HeaderField.RefcountTableOffset..]);
        uint refcountTableClusters = BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2HeaderField.RefcountTableClusters..]);
        uint snapshotCount = BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2HeaderField.NbSnapshots..]);
        ulong snapshotsOffset = BinaryPrimitives.ReadUInt64BigEndian(h[Qcow2HeaderField.SnapshotsOffset..]);

        ulong incompatible = 0, compatible = 0, autoclear = 0;
        uint refcountOrder = Qcow2Format.DefaultRefcountOrder;
        uint headerLength = Qcow2Format.HeaderLengthV2;
        if (version >= 3)
        {
            incompatible = BinaryPrimitives.ReadUInt64BigEndian(h[Qcow2HeaderField.IncompatibleFeatures..]);
            compatible = BinaryPrimitives.ReadUInt64BigEndian(h[Qcow2HeaderField.CompatibleFeatures..]);
            autoclear = BinaryPrimitives.ReadUInt64BigEndian(h[Qcow2HeaderField.AutoclearFeatures..]);
            refcountOrder = BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2HeaderField.RefcountOrder..]);
            headerLength = BinaryPrimitives.ReadUInt32BigEndian(h[Qcow2HeaderField.HeaderLength..]);
            if (headerLength < Qcow2Format.MinimumHeaderLengthV3 || headerLength % 8 != 0 || headerLength > (uint)clusterSize)
            {
                throw Refuse($"header_length {headerLength} is invalid (at least 104, a multiple of 8, within the first cluster)");
            }
        }

        // Header extensions come before the feature checks so that an unknown bit can be named
        // from the image's own feature name table (== Feature name table ==).
        int extensionLimit = clusterSize;
        if (backingOffset != 0)
        {
            if (backingSize > Qcow2Format.MaximumBackingFileNameLength)
            {
                throw Refuse($"backing_file_size {backingSize} exceeds the limit of {Qcow2Format.MaximumBackingFileNameLength} bytes");
            }
            if (backingOffset < headerLength || backingOffset > (ulong)clusterSize || backingSize > (ulong)clusterSize - backingOffset)
            {
                throw Refuse($"the backing file name (offset {backingOffset}, {backingSize} bytes) does not lie within the first cluster after the header");
            }
            extensionLimit = (int)backingOffset;
        }
        var extensions = ParseExtensions(h, (int)headerLength, extensionLimit, version);

        if (version >= 3)
        {
            ulong unknown = incompatible & ~Qcow2Format.IncompatibleKnown;
            if (unknown != 0)
            {
                int bit = System.Numerics.BitOperations.TrailingZeroCount(unknown);
                string name = extensions.FeatureNames.TryGetValue((0, bit), out string? n) ? $" ({n})" : "";
                throw Refuse($"unknown incompatible feature bit {bit}{name} is set (incompatible_features 0x{incompatible:x})");
            }
            if ((incompatible & Qcow2Format.IncompatibleExternalData) != 0)
            {
                throw Refuse("incompatible feature bit 2 (external data file) is set; images with an external data file are not supported");
            }
            if (refcountOrder > Qcow2Format.MaximumRefcountOrder)
            {
                throw Refuse($"refcount_order {refcountOrder} is out of range (0 to 6)");
            }
            if ((incompatible & Qcow2Format.IncompatibleExtendedL2) != 0 && clusterBits < Qcow2Format.MinimumClusterBitsExtendedL2)
            {
                throw Refuse($"extended L2 entries need clusters of at least 16 KiB, but cluster_bits is {clusterBits}");
            }
            if ((incompatible & Qcow2Format.IncompatibleCompressionType) != 0 && headerLength <= 104)
            {
                throw Refuse("incompatible feature bit 3 (compression type) is set but the header has no compression_type field");
            }
        }
        if (cryptMethod != 0 || extensions.HasEncryptionHeader)
        {
            string method = cryptMethod switch { 1 => "AES", 2 => "LUKS", _ => $"method {cryptMethod}" };
            throw Refuse($"the image is encrypted (crypt_method {method}); encrypted qcow2 images are not supported");
        }
        if (virtualSize > (ulong)Qcow2Format.MaximumVirtualSize)
        {
            throw Refuse($"virtual size {virtualSize} exceeds the limit of 2^61 bytes");
        }
        bool extendedL2 = (incompatible & Qcow2Format.IncompatibleExtendedL2) != 0;
        if (l1Size > Qcow2Format.MaximumL1Entries)
        {
            throw Refuse($"l1_size {l1Size} exceeds the limit of {Qcow2Format.MaximumL1Entries} entries (a 32 MiB L1 table)");
        }
        long l1Needed = Qcow2Header.L1EntriesFor((long)virtualSize, clusterBits, extendedL2);
        if (l1Needed > l1Size)
        {
            throw Refuse($"the L1 table ({l1Size} entries) is too small for the virtual size {virtualSize} ({l1Needed} entries needed)");
        }
        long clusterMask = clusterSize - 1;
        long l1Bytes = (long)l1Size * 8; // bounded above: at most 32 MiB
        CheckArea("L1 table", l1Offset, l1Bytes, fileSize, clusterMask, allowEmpty: l1Size == 0);

        long refcountTableLimit = Qcow2Format.MaximumRefcountTableBytes >> clusterBits;
        if (refcountTableClusters == 0 || refcountTableClusters > refcountTableLimit)
        {
            throw Refuse($"refcount_table_clusters {refcountTableClusters} is out of range (1 to {refcountTableLimit}, an 8 MiB refcount table)");
        }
        long refcountTableBytes = (long)refcountTableClusters << clusterBits;
        CheckArea("refcount table", refcountTableOffset, refcountTableBytes, fileSize, clusterMask, allowEmpty: false);

        if (snapshotCount > Qcow2Format.MaximumSnapshots)
        {
            throw Refuse($"nb_snapshots {snapshotCount} exceeds the limit of {Qcow2Format.MaximumSnapshots}");
        }
        List<Qcow2Snapshot> snapshots = [];
        long snapshotTableLength = 0;
        if (snapshotCount > 0)
        {
            CheckArea("snapshot table", snapshotsOffset, 40, fileSize, clusterMask, allowEmpty: false);
            snapshotTableLength = ReadSnapshots(device, (long)snapshotsOffset, (int)snapshotCount, fileSize, clusterBits, version, snapshots);
        }

        if (extensions.Bitmaps is { } bitmaps)
        {
            CheckArea("bitmap directory", (ulong)bitmaps.DirectoryOffset, bitmaps.DirectorySize, fileSize, clusterMask, allowEmpty: false);
        }
        int compressionType = Qcow2Format.CompressionZlib;
        if (version >= 3 && headerLength > 104)
        {
            // compression_type, byte 104: meaningful only with incompatible bit 3; without it the type is zlib.
            compressionType = (incompatible & Qcow2Format.IncompatibleCompressionType) != 0 ? h[Qcow2HeaderField.CompressionType] : Qcow2Format.CompressionZlib;
            if (compressionType is not (Qcow2Format.CompressionZlib or Qcow2Format.CompressionZstd))
            {
                throw Refuse($"unknown compression_type {compressionType} (0 zlib, 1 zstd)");
            }
        }

        // Metadata areas must not overlap one another (qcow2 keeps each cluster for one purpose).
        List<(string Name, long Start, long Length)> areas =
        [
            ("header", 0, clusterSize),
            ("L1 table", (long)l1Offset, l1Bytes),
            ("refcount table", (long)refcountTableOffset, refcountTableBytes),
        ];
        if (snapshotCount > 0)
        {
            areas.Add(("snapshot table", (long)snapshotsOffset, snapshotTableLength));
            foreach (Qcow2Snapshot snapshot in snapshots)
            {
                areas.Add(($"L1 table of snapshot '{snapshot.Id}'", snapshot.L1TableOffset, (long)snapshot.L1Size * 8));
            }
        }
        if (extensions.Bitmaps is { } directory)
        {
            areas.Add(("bitmap directory", directory.DirectoryOffset, directory.DirectorySize));
        }
        for (int i = 0; i < areas.Count; i++)
        {
            for (int j = i + 1; j < areas.Count; j++)
            {
                if (Overlaps(areas[i].Start, areas[i].Length, areas[j].Start, areas[j].Length, clusterMask))
                {
                    throw Refuse($"the {areas[i].Name} overlaps the {areas[j].Name}");
                }
            }
        }

        string? backingFile = null;
        if (backingOffset != 0)
        {
            backingFile = DecodeName(h.Slice((int)backingOffset, (int)backingSize), "backing file name");
        }
        return new Qcow2Header
        {
            Version = version,
            ClusterBits = clusterBits,
            VirtualSize = (long)virtualSize,
            CryptMethod = cryptMethod,
            L1Size = (int)l1Size,
            L1TableOffset = (long)l1Offset,
            RefcountTableOffset = (long)refcountTableOffset,
            RefcountTableClusters = (int)refcountTableClusters,
            SnapshotCount = (int)snapshotCount,
            SnapshotsOffset = (long)snapshotsOffset,
            IncompatibleFeatures = incompatible,
            CompatibleFeatures = compatible,
            AutoclearFeatures = autoclear,
            RefcountOrder = (int)refcountOrder,
            HeaderLength = (int)headerLength,
            BackingFileOffset = (long)backingOffset,
            BackingFileSize = backingOffset != 0 ? (int)backingSize : 0,
            BackingFile = backingFile,
            BackingFormat = extensions.BackingFormat,
            ExtensionsEnd = extensions.End,
            FeatureNames = extensions.FeatureNames,
            Snapshots = snapshots,
            SnapshotTableLength = snapshotTableLength,
            Bitmaps = extensions.Bitmaps,
            CompressionType = compressionType,
        };
    }

    private sealed class Extensions
    {
        public string? BackingFormat;
        public bool HasEncryptionHeader;
        public int End;
        public Dictionary<(int, int), string> FeatureNames = [];
        public Qcow2BitmapsExtension? Bitmaps;
    }

    /// <summary>=== Header extensions ===: type, length, data padded to 8, until the end marker.</summary>
    private static Extensions ParseExtensions(ReadOnlySpan<byte> h, int start, int limit, int version)
    {
        Extensions result = new() { End = start };
        HashSet<uint> seen = [];
        int position = start;
        while (true)
        {
            if (limit - position < 8)
            {
                // No room for another extension header: the area simply ends here.
                result.End = position;
                return result;
            }
            uint type = BinaryPrimitives.ReadUInt32BigEndian(h[position..]);
            uint length = BinaryPrimitives.ReadUInt32BigEndian(h[(position + 4)..]);
            if (type == Qcow2Format.ExtensionEnd)
            {
                result.End = position + 8;
                return result;
            }
            int dataStart = position + 8;
            if (length > (uint)(limit - dataStart))
            {
                throw Refuse($"header extension 0x{type:x8} ({length} bytes at offset {position}) runs past the end of the header area");
            }
            if (!seen.Add(type))
            {
                throw Refuse($"header extension 0x{type:x8} appears more than once");
            }
            ReadOnlySpan<byte> data = h.Slice(dataStart, (int)length);
            switch (type)
            {
                case Qcow2Format.ExtensionBackingFormat:
                    result.BackingFormat = DecodeName(data, "backing format");
                    break;
                case Qcow2Format.ExtensionFeatureNameTable:
                    for (int i = 0; i + Qcow2Format.FeatureNameEntrySize <= data.Length; i += Qcow2Format.FeatureNameEntrySize)
                    {
                        ReadOnlySpan<byte> name = data.Slice(i + 2, 46);
                        int end = name.IndexOf((byte)0);
                        string text = Encoding.ASCII.GetString(end < 0 ? name : name[..end]);
                        result.FeatureNames[(data[i], data[i + 1])] = new string(text.Where(c => !char.IsControl(c)).ToArray());
                    }
                    break;
                case Qcow2Format.ExtensionFullDiskEncryption:
                    result.HasEncryptionHeader = true;
                    break;
                case Qcow2Format.ExtensionBitmaps:
                    result.Bitmaps = ParseBitmapsExtension(data);
                    break;
                case Qcow2Format.ExtensionExternalDataFile:
                    throw Refuse("the image names an external data file; images with an external data file are not supported");
                default:
                    // Unknown extensions "can be safely ignored".
                    break;
            }
            long next = (long)dataStart + ((length + 7L) & ~7L);
            if (next > limit)
            {
                result.End = limit;
                return result;
            }
            position = (int)next;
        }
    }

    /// <summary>
    /// The bitmaps extension's fixed fields (=== Bitmaps extension ===). Its directory and tables are
    /// in use whether or not the autoclear bit says the bitmaps are consistent, so they are read
    /// (and protected) either way; the directory's place is checked against the file with the other areas.
    /// </summary>
    private static Qcow2BitmapsExtension ParseBitmapsExtension(ReadOnlySpan<byte> data)
    {
        if (data.Length < Qcow2Format.BitmapsExtensionLength)
        {
            throw Refuse($"the bitmaps extension is {data.Length} bytes, shorter than its {Qcow2Format.BitmapsExtensionLength}-byte fields");
        }
        uint count = BinaryPrimitives.ReadUInt32BigEndian(data);
        ulong size = BinaryPrimitives.ReadUInt64BigEndian(data[8..]);
        ulong offset = BinaryPrimitives.ReadUInt64BigEndian(data[16..]);
        if (count == 0 || count > Qcow2Format.MaximumBitmaps)
        {
            throw Refuse($"the bitmaps extension names {count} bitmaps (1 to {Qcow2Format.MaximumBitmaps})");
        }
        if (size == 0 || size > (ulong)Qcow2Format.MaximumBitmapDirectorySize)
        {
            throw Refuse($"the bitmap directory size {size} is out of range (1 to {Qcow2Format.MaximumBitmapDirectorySize})");
        }
        if (offset > (ulong)Qcow2Format.MaximumHostOffset)
        {
            throw Refuse($"the bitmap directory offset 0x{offset:x} is out of range");
        }
        return new Qcow2BitmapsExtension((int)count, (long)size, (long)offset);
    }

    /// <summary>Reads the snapshot table (== Snapshots ==); returns its length in bytes.</summary>
    private static long ReadSnapshots(IBlockDevice device, long offset, int count, long fileSize, int clusterBits, int version, List<Qcow2Snapshot> snapshots)
    {
        long clusterMask = (1L << clusterBits) - 1;
        long position = offset;
        long end = offset;
        Span<byte> fixedPart = stackalloc byte[40];
        for (int i = 0; i < count; i++)
        {
            if (position > fileSize - 40)
            {
                throw Refuse($"snapshot table entry {i} lies beyond the end of the file");
            }
            Check(DeviceIo.ReadBytes(device, position, fixedPart), "reading the snapshot table");
            ulong l1Offset = BinaryPrimitives.ReadUInt64BigEndian(fixedPart);
            uint l1Size = BinaryPrimitives.ReadUInt32BigEndian(fixedPart[8..]);
            int idLength = BinaryPrimitives.ReadUInt16BigEndian(fixedPart[12..]);
            int nameLength = BinaryPrimitives.ReadUInt16BigEndian(fixedPart[14..]);
            uint extraLength = BinaryPrimitives.ReadUInt32BigEndian(fixedPart[36..]);
            if (extraLength > Qcow2Format.MaximumSnapshotExtraData)
            {
                throw Refuse($"snapshot {i} has {extraLength} bytes of extra data (limit {Qcow2Format.MaximumSnapshotExtraData})");
            }
            if (version >= 3 && extraLength < 16)
            {
                throw Refuse($"snapshot {i} has {extraLength} bytes of extra data; version 3 requires at least 16");
            }
            if (l1Size > Qcow2Format.MaximumL1Entries)
            {
                throw Refuse($"snapshot {i} has an L1 table of {l1Size} entries (limit {Qcow2Format.MaximumL1Entries})");
            }
            CheckArea($"L1 table of snapshot {i}", l1Offset, (long)l1Size * 8, fileSize, clusterMask, allowEmpty: l1Size == 0);
            // Entries start on 8-byte boundaries, but QEMU writes the last one unpadded and the file
            // may end right after it (qcow2.txt, "Snapshots"): only the entry itself must fit.
            long entryLength = 40L + extraLength + idLength + nameLength;
            if (entryLength > fileSize - position)
            {
                throw Refuse($"snapshot table entry {i} runs past the end of the file");
            }
            byte[] rest = new byte[extraLength + idLength + nameLength];
            Check(DeviceIo.ReadBytes(device, position + 40, rest), "reading the snapshot table");
            long snapshotSize = extraLength >= 16 ? (long)BinaryPrimitives.ReadUInt64BigEndian(rest.AsSpan(8)) : 0;
            string id = Encoding.UTF8.GetString(rest, (int)extraLength, idLength);
            string name = Encoding.UTF8.GetString(rest, (int)extraLength + idLength, nameLength);
            snapshots.Add(new Qcow2Snapshot(id, name, (long)l1Offset, (int)l1Size, snapshotSize));
            end = position + entryLength;
            position += (entryLength + 7) & ~7L;
        }
        return end - offset;
    }

    /// <summary>Checks that [offset, offset + length) is cluster aligned and lies within the file, overflow-safe.</summary>
    private static void CheckArea(string name, ulong offset, long length, long fileSize, long clusterMask, bool allowEmpty)
    {
        if (allowEmpty && length == 0)
        {
            return;
        }
        if ((offset & (ulong)clusterMask) != 0)
        {
            throw Refuse($"the {name} offset 0x{offset:x} is not aligned to a cluster");
        }
        if (offset == 0)
        {
            throw Refuse($"the {name} offset is 0 (it would overlap the header)");
        }
        if (offset >= (ulong)fileSize || (ulong)length > (ulong)fileSize - offset)
        {
            throw Refuse($"the {name} (offset 0x{offset:x}, {length} bytes) lies beyond the end of the file ({fileSize} bytes)");
        }
    }

    /// <summary>Overlap at cluster granularity: two areas may not share a cluster.</summary>
    private static bool Overlaps(long startA, long lengthA, long startB, long lengthB, long clusterMask)
    {
        if (lengthA == 0 || lengthB == 0)
        {
            return false;
        }
        long endA = (startA + lengthA + clusterMask) & ~clusterMask;
        long endB = (startB + lengthB + clusterMask) & ~clusterMask;
        return (startA & ~clusterMask) < endB && (startB & ~clusterMask) < endA;
    }

    private static string DecodeName(ReadOnlySpan<byte> bytes, string what)
    {
        if (bytes.IndexOf((byte)0) >= 0)
        {
            throw Refuse($"the {what} contains a NUL byte");
        }
        try
        {
            return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            throw Refuse($"the {what} is not valid UTF-8");
        }
    }

    private static void Check(IoStatus status, string what)
    {
        if (status != IoStatus.Ok)
        {
            throw new StorageException($"qcow2: {status.Describe()} while {what}");
        }
    }

    internal static StorageException Refuse(string problem) => new($"qcow2 image refused: {problem}");
}
