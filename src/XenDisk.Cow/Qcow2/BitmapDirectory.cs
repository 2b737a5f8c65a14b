using System.Buffers.Binary;
using System.Text;

namespace XenDisk.Cow.Qcow2;

/// <summary>
/// One persistent dirty bitmap (== Bitmaps ==): its directory entry and, when the image maintains it,
/// its bits in memory. Bit i covers guest bytes [i * granularity, (i + 1) * granularity); bits are
/// kept as little-endian 64-bit words, which is the order the bitmap data has on disk
/// (== Bitmap data ==: bit k of byte j is bit j * 8 + k), so a word array is also the serialized form.
/// </summary>
public sealed class PersistentBitmap
{
    internal PersistentBitmap(string name, uint flags, int granularityBits, long tableOffset, uint tableEntries)
    {
        Name = name;
        Flags = flags;
        GranularityBits = granularityBits;
        TableOffset = tableOffset;
        TableEntries = tableEntries;
    }

    public string Name { get; }

    /// <summary>The directory entry's flags: bit 0 in_use, bit 1 auto, bit 2 extra_data_compatible.</summary>
    public uint Flags { get; internal set; }

    public int GranularityBits { get; }

    public long Granularity => 1L << GranularityBits;

    /// <summary>The "auto" flag: the bitmap tracks writes (QEMU's enabled bitmap).</summary>
    public bool Enabled => (Flags & BitmapDirectory.FlagAuto) != 0;

    /// <summary>
    /// The in_use flag was set when the image was opened: the program that had it open did not store
    /// the bitmap (== Bitmap directory ==, bit 0), so its contents are inconsistent. Such a bitmap is
    /// kept as it is and can only be removed, as in QEMU.
    /// </summary>
    public bool Inconsistent { get; internal set; }

    internal long TableOffset { get; set; }

    internal uint TableEntries { get; set; }

    /// <summary>The bits, or null when the bitmap is not loaded (inconsistent, or the image is read-only).</summary>
    internal long[]? Words { get; set; }

    /// <summary>Sets the bits of every granule that [offset, offset + length) touches. Safe against concurrent callers.</summary>
    internal void MarkDirty(long offset, long length)
    {
        long[]? words = Words;
        if (words == null || length <= 0)
        {
            return;
        }
        long first = offset >> GranularityBits;
        long last = Math.Min((offset + length - 1) >> GranularityBits, (long)words.Length * 64 - 1);
        for (long word = first >> 6; word <= last >> 6; word++)
        {
            int low = word == first >> 6 ? (int)(first & 63) : 0;
            int high = word == last >> 6 ? (int)(last & 63) : 63;
            long mask = high == 63 ? -1L << low : ((1L << (high + 1)) - 1) & (-1L << low);
            if ((Volatile.Read(ref words[word]) & mask) != mask)
            {
                Interlocked.Or(ref words[word], mask);
            }
        }
    }

    /// <summary>The dirty granules as merged ranges of guest bytes, clamped to <paramref name="virtualSize"/>.</summary>
    public IReadOnlyList<(long Offset, long Length)> DirtyRanges(long virtualSize)
    {
        List<(long, long)> ranges = [];
        long[]? words = Words;
        if (words == null)
        {
            return ranges;
        }
        long bits = (virtualSize + Granularity - 1) >> GranularityBits;
        long start = -1;
        for (long bit = 0; bit <= bits; bit++)
        {
            bool set = bit < bits && (words[bit >> 6] & (1L << (int)(bit & 63))) != 0;
            if (set && start < 0)
            {
                start = bit;
            }
            else if (!set && start >= 0)
            {
                long from = start << GranularityBits;
                ranges.Add((from, Math.Min(bit << GranularityBits, virtualSize) - from));
                start = -1;
            }
        }
        return ranges;
    }
}

/// <summary>
/// The bitmap directory (=== Bitmaps extension ===, == Bitmap directory ==): parsing with the
/// constraints QEMU's qcow2-bitmap.c applies before it uses a bitmap, and serializing.
/// </summary>
internal static class BitmapDirectory
{
    public const uint FlagInUse = 1u << 0;
    public const uint FlagAuto = 1u << 1;
    public const uint FlagExtraDataCompatible = 1u << 2;
    private const uint KnownFlags = FlagInUse | FlagAuto | FlagExtraDataCompatible;

    /// <summary>Entry fields before the extra data and name.</summary>
    public const int EntryFixedLength = 24;

    /// <summary>type 1: dirty tracking bitmap, the only type defined.</summary>
    public const byte TypeDirtyTracking = 1;

    /// <summary>QEMU's BME_MIN_GRANULARITY_BITS and BME_MAX_GRANULARITY_BITS.</summary>
    public const int MinimumGranularityBits = 9;
    public const int MaximumGranularityBits = 31;

    /// <summary>QEMU's BME_MAX_NAME_SIZE.</summary>
    public const int MaximumNameLength = 1023;

    /// <summary>QEMU's BME_MAX_TABLE_SIZE (entries) and BME_MAX_PHYS_SIZE (bytes of bitmap data, 64 MiB).</summary>
    public const uint MaximumTableEntries = 0x800_0000;
    public const long MaximumDataBytes = 0x400_0000;

    public static int EntryLength(int nameLength) => (EntryFixedLength + nameLength + 7) & ~7;

    /// <summary>Table entries a bitmap of this granularity needs for the disk: one per cluster of bitmap data.</summary>
    public static long TableEntriesFor(long virtualSize, int granularityBits, int clusterBits)
    {
        long bits = (virtualSize + (1L << granularityBits) - 1) >> granularityBits;
        long bytes = (bits + 63) / 64 * 8;
        return Math.Max(1, (bytes + (1L << clusterBits) - 1) >> clusterBits);
    }

    /// <summary>Parses the directory; throws <see cref="FormatException"/> naming the first entry that breaks a constraint.</summary>
    public static List<PersistentBitmap> Parse(ReadOnlySpan<byte> directory, int count, long virtualSize, int clusterBits)
    {
        List<PersistentBitmap> bitmaps = [];
        HashSet<string> names = [];
        int position = 0;
        for (int i = 0; i < count; i++)
        {
            if (directory.Length - position < EntryFixedLength)
            {
                throw new FormatException($"bitmap directory entry {i} runs past the end of the directory");
            }
            ReadOnlySpan<byte> entry = directory[position..];
            long tableOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(entry);
            uint tableEntries = BinaryPrimitives.ReadUInt32BigEndian(entry[8..]);
            uint flags = BinaryPrimitives.ReadUInt32BigEndian(entry[12..]);
            byte type = entry[16];
            int granularityBits = entry[17];
            int nameLength = BinaryPrimitives.ReadUInt16BigEndian(entry[18..]);
            uint extraLength = BinaryPrimitives.ReadUInt32BigEndian(entry[20..]);
            if (extraLength != 0)
            {
                // QEMU defines no extra data and refuses any.
                throw new FormatException($"bitmap directory entry {i} has {extraLength} bytes of extra data, which no known version defines");
            }
            int length = EntryLength(nameLength);
            if (length > directory.Length - position)
            {
                throw new FormatException($"bitmap directory entry {i} runs past the end of the directory");
            }
            string name = Encoding.UTF8.GetString(entry.Slice(EntryFixedLength, nameLength));
            string label = $"bitmap '{name}'";
            if (type != TypeDirtyTracking)
            {
                throw new FormatException($"{label} has type {type} (only 1, dirty tracking, is defined)");
            }
            if (granularityBits is < MinimumGranularityBits or > MaximumGranularityBits)
            {
                throw new FormatException($"{label} has granularity_bits {granularityBits} ({MinimumGranularityBits} to {MaximumGranularityBits})");
            }
            if ((flags & ~KnownFlags) != 0)
            {
                throw new FormatException($"{label} has reserved flags 0x{flags & ~KnownFlags:x} set");
            }
            if (nameLength == 0 || nameLength > MaximumNameLength)
            {
                throw new FormatException($"{label} has a name of {nameLength} bytes (1 to {MaximumNameLength})");
            }
            long clusterMask = (1L << clusterBits) - 1;
            if (tableEntries == 0 || tableOffset == 0 || (tableOffset & clusterMask) != 0 || tableEntries > MaximumTableEntries
                || ((long)tableEntries << clusterBits) > MaximumDataBytes)
            {
                throw new FormatException($"{label}: its table ({tableEntries} entries at 0x{tableOffset:x}) breaks the format's constraints");
            }
            bool inUse = (flags & FlagInUse) != 0;
            if (!inUse && tableEntries < TableEntriesFor(virtualSize, granularityBits, clusterBits))
            {
                // An in-use bitmap may have a short table (not stored after a resize); a consistent one may not.
                throw new FormatException($"{label}: its table of {tableEntries} entries is too small for the disk");
            }
            if (!names.Add(name))
            {
                throw new FormatException($"the bitmap name '{name}' appears twice");
            }
            bitmaps.Add(new PersistentBitmap(name, flags, granularityBits, tableOffset, tableEntries) { Inconsistent = inUse });
            position += length;
        }
        if (position != directory.Length)
        {
            throw new FormatException($"the bitmap directory has {directory.Length - position} bytes after its {count} entries");
        }
        return bitmaps;
    }

    public static long SizeOf(IReadOnlyList<PersistentBitmap> bitmaps) => bitmaps.Sum(b => (long)EntryLength(Encoding.UTF8.GetByteCount(b.Name)));

    /// <summary>Writes the entries into <paramref name="target"/> (at least <see cref="SizeOf"/> bytes, zeroed).</summary>
    public static void Serialize(IReadOnlyList<PersistentBitmap> bitmaps, Span<byte> target)
    {
        int position = 0;
        foreach (PersistentBitmap bitmap in bitmaps)
        {
            Span<byte> entry = target[position..];
            byte[] name = Encoding.UTF8.GetBytes(bitmap.Name);
            BinaryPrimitives.WriteUInt64BigEndian(entry, (ulong)bitmap.TableOffset);
            BinaryPrimitives.WriteUInt32BigEndian(entry[8..], bitmap.TableEntries);
            BinaryPrimitives.WriteUInt32BigEndian(entry[12..], bitmap.Flags);
            entry[16] = TypeDirtyTracking;
            entry[17] = (byte)bitmap.GranularityBits;
            BinaryPrimitives.WriteUInt16BigEndian(entry[18..], (ushort)name.Length);
            BinaryPrimitives.WriteUInt32BigEndian(entry[20..], 0);
            name.CopyTo(entry[EntryFixedLength..]);
            position += EntryLength(name.Length);
        }
    }
}
