using System.Buffers.Binary;
using System.Text;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

public sealed partial class Qcow2Image
{
    /// <summary>
    /// Writes a new, empty qcow2 version 3 image onto <paramref name="target"/> (an empty growable
    /// device, or one large enough): header with backing file name and backing format extension,
    /// feature name table when it fits, an empty L1 table, and a refcount structure. Flushes.
    /// Throws <see cref="ArgumentException"/> for invalid options and <see cref="StorageException"/> for I/O failures.
    /// </summary>
    public static void Create(IBlockDevice target, Qcow2CreateOptions options)
    {
        ArgumentNullException.ThrowIfNull(target);
        ArgumentNullException.ThrowIfNull(options);
        int clusterSize = options.ClusterSize;
        if (!int.IsPow2(clusterSize) || clusterSize < 1 << Qcow2Format.MinimumClusterBits || clusterSize > 1 << Qcow2Format.MaximumClusterBits)
        {
            throw new ArgumentException($"The cluster size {clusterSize} must be a power of two from 512 B to 2 MiB.", nameof(options));
        }
        int clusterBits = System.Numerics.BitOperations.Log2((uint)clusterSize);
        if (options.VirtualSize < 0 || options.VirtualSize % 512 != 0 || options.VirtualSize > Qcow2Format.MaximumVirtualSize)
        {
            throw new ArgumentException($"The virtual size {options.VirtualSize} must be a multiple of 512 up to 2^61.", nameof(options));
        }
        if (options.RefcountOrder is < 0 or > Qcow2Format.MaximumRefcountOrder)
        {
            throw new ArgumentException("The refcount order must be 0 to 6.", nameof(options));
        }
        if (options.CompressionType is not (Qcow2Format.CompressionZlib or Qcow2Format.CompressionZstd))
        {
            throw new ArgumentException("The compression type must be 0 (zlib) or 1 (zstd).", nameof(options));
        }
        bool hasBacking = !string.IsNullOrEmpty(options.BackingFile);
        if (hasBacking && string.IsNullOrEmpty(options.BackingFormat))
        {
            throw new ArgumentException("A backing file needs its format (raw or qcow2): XenDisk never probes a backing file's format.", nameof(options));
        }
        bool extendedL2 = options.ExtendedL2 ?? (hasBacking && clusterBits >= Qcow2Format.MinimumClusterBitsExtendedL2);
        if (extendedL2 && clusterBits < Qcow2Format.MinimumClusterBitsExtendedL2)
        {
            throw new ArgumentException("Extended L2 entries need clusters of at least 16 KiB (qcow2 spec, cluster_bits).", nameof(options));
        }
        long l1Entries = Qcow2Header.L1EntriesFor(options.VirtualSize, clusterBits, extendedL2);
        if (l1Entries > Qcow2Format.MaximumL1Entries)
        {
            throw new ArgumentException($"The virtual size needs {l1Entries} L1 entries, more than the 32 MiB L1 limit; use larger clusters.", nameof(options));
        }

        using AlignedBlock header = new(clusterSize);
        Span<byte> h = header.Span;
        int position = BuildHeaderExtensions(h, options, hasBacking, clusterSize, out int backingOffset, out int backingLength);

        int l1Clusters = Math.Max(1, (int)((l1Entries * 8 + clusterSize - 1) / clusterSize));
        ushort[] counts = new ushort[1 + l1Clusters];
        Array.Fill(counts, (ushort)1);
        if (target is IGrowableBlockDevice growable)
        {
            Check(growable.EnsureSize((long)(1 + l1Clusters) << clusterBits), "growing the image file");
        }
        using (AlignedBlock l1 = new(l1Clusters << clusterBits))
        {
            Check(DeviceIo.Write(target, clusterSize, l1, 0, l1.Length), "writing the L1 table");
        }
        Check(RefcountStructure.WriteFresh(target, counts, clusterBits, options.RefcountOrder, out long tableOffset, out int tableClusters, out _), "writing the refcount structure");

        BinaryPrimitives.WriteUInt32BigEndian(h[Qcow2HeaderField.Magic..], Qcow2Format.Magic);
        BinaryPrimitives.WriteUInt32BigEndian(h[Qcow2HeaderField.Version..], 3);
        BinaryPrimitives.WriteUInt64BigEndian(h[Qcow2HeaderField.BackingFileOffset..], hasBacking ? (ulong)backingOffset : 0);
        BinaryPrimitives.WriteUInt32BigEndian(h[Qcow2HeaderField.BackingFileSize..], hasBacking ? (uint)backingLength : 0);
        BinaryPrimitives.WriteUInt32BigEndian(h[Qcow2HeaderField.ClusterBits..], (uint)clusterBits);
        BinaryPrimitives.WriteUInt64BigEndian(h[Qcow2HeaderField.Size..], (ulong)options.VirtualSize);
        BinaryPrimitives.WriteUInt32BigEndian(h[Qcow2HeaderField.CryptMethod..], 0);
        BinaryPrimitives.WriteUInt32BigEndian(h[Qcow2HeaderField.L1Size..], (uint)l1Entries);
        BinaryPrimitives.WriteUInt64BigEndian(h[Qcow2HeaderField.L1TableOffset..], (ulong)clusterSize);
        BinaryPrimitives.WriteUInt64BigEndian(h[Qcow2HeaderField.RefcountTableOffset..], (ulong)tableOffset);
        BinaryPrimitives.WriteUInt32BigEndian(h[Qcow2HeaderField.RefcountTableClusters..], (uint)tableClusters);
        BinaryPrimitives.WriteUInt32BigEndian(h[Qcow2HeaderField.NbSnapshots..], 0);
        BinaryPrimitives.WriteUInt64BigEndian(h[Qcow2HeaderField.SnapshotsOffset..], 0);
        bool zstd = options.CompressionType == Qcow2Format.CompressionZstd;
        BinaryPrimitives.WriteUInt64BigEndian(h[Qcow2HeaderField.IncompatibleFeatures..], (extendedL2 ? Qcow2Format.IncompatibleExtendedL2 : 0) | (zstd ? Qcow2Format.IncompatibleCompressionType : 0));
        BinaryPrimitives.WriteUInt64BigEndian(h[Qcow2HeaderField.CompatibleFeatures..], options.LazyRefcounts ? Qcow2Format.CompatibleLazyRefcounts : 0);
        BinaryPrimitives.WriteUInt64BigEndian(h[Qcow2HeaderField.AutoclearFeatures..], 0);
        BinaryPrimitives.WriteUInt32BigEndian(h[Qcow2HeaderField.RefcountOrder..], (uint)options.RefcountOrder);
        BinaryPrimitives.WriteUInt32BigEndian(h[Qcow2HeaderField.HeaderLength..], Qcow2Format.HeaderLengthWritten);
        h[Qcow2HeaderField.CompressionType] = (byte)options.CompressionType; // compression_type; meaningful with incompatible bit 3 only
        _ = position;
        Check(DeviceIo.Write(target, 0, header, 0, clusterSize), "writing the header");
        Check(target.Flush(), "flushing the new image");
    }

    /// <summary>
    /// Lays out the header extensions after the 112-byte header (=== Header extensions ===): backing
    /// format, the feature name table when there is room, the end marker, and then the backing file
    /// name in the rest of the first cluster. Returns the end of the used area.
    /// </summary>
    private static int BuildHeaderExtensions(Span<byte> h, Qcow2CreateOptions options, bool hasBacking, int clusterSize, out int backingOffset, out int backingLength)
    {
        byte[] backingName = hasBacking ? Encoding.UTF8.GetBytes(options.BackingFile!) : [];
        byte[] backingFormat = hasBacking ? Encoding.UTF8.GetBytes(options.BackingFormat!) : [];
        if (backingName.Length > Qcow2Format.MaximumBackingFileNameLength)
        {
            throw new ArgumentException($"The backing file name is {backingName.Length} bytes; the limit is {Qcow2Format.MaximumBackingFileNameLength}.", nameof(options));
        }
        (int Type, int Bit, string Name)[] features =
        [
            (0, 0, "dirty bit"), (0, 1, "corrupt bit"), (0, 2, "external data file"), (0, 3, "compression type"),
            (0, 4, "extended L2 entries"), (1, 0, "lazy refcounts"), (2, 0, "bitmaps"), (2, 1, "raw external data"),
        ];
        int formatExtension = hasBacking ? 8 + ((backingFormat.Length + 7) & ~7) : 0;
        int featureExtension = 8 + features.Length * Qcow2Format.FeatureNameEntrySize;
        int fixedPart = Qcow2Format.HeaderLengthWritten + formatExtension + 8 + backingName.Length;
        bool withFeatureNames = fixedPart + featureExtension <= clusterSize;
        if (fixedPart > clusterSize)
        {
            throw new ArgumentException("The backing file name does not fit in the first cluster; use a shorter name or larger clusters.", nameof(options));
        }
        int position = Qcow2Format.HeaderLengthWritten;
        if (hasBacking)
        {
            BinaryPrimitives.WriteUInt32BigEndian(h[position..], Qcow2Format.ExtensionBackingFormat);
            BinaryPrimitives.WriteUInt32BigEndian(h[(position + 4)..], (uint)backingFormat.Length);
            backingFormat.CopyTo(h[(position + 8)..]);
            position += formatExtension;
        }
        if (withFeatureNames)
        {
            BinaryPrimitives.WriteUInt32BigEndian(h[position..], Qcow2Format.ExtensionFeatureNameTable);
            BinaryPrimitives.WriteUInt32BigEndian(h[(position + 4)..], (uint)(features.Length * Qcow2Format.FeatureNameEntrySize));
            int entry = position + 8;
            foreach ((int type, int bit, string name) in features)
            {
                h[entry] = (byte)type;
                h[entry + 1] = (byte)bit;
                Encoding.ASCII.GetBytes(name).CopyTo(h[(entry + 2)..]);
                entry += Qcow2Format.FeatureNameEntrySize;
            }
            position += featureExtension;
        }
        position += 8; // end marker: eight zero bytes
        backingOffset = position;
        backingLength = backingName.Length;
        backingName.CopyTo(h[position..]);
        return position + backingName.Length;
    }

    private static void Check(IoStatus status, string what)
    {
        if (status != IoStatus.Ok)
        {
            throw new StorageException($"qcow2: {what} failed ({status.Describe()})", status == IoStatus.NoSpace ? 28 : 5);
        }
    }
}
