// The flat bitmap overlay ("dscow") on-disk format, version 1. docs/BITMAP-FORMAT.md says the same
// in prose; keep the two in step.
//
// Everything is little-endian. The CoW device is fully allocated and at least as large as
// data_offset + virtual_size; grain X of the virtual disk lives at data_offset + X * grain_size,
// so there are no tables and nothing to allocate.
//
//   CoW device
//   +--------------------+ 0
//   | header (512 bytes) |   checksummed; written as one logical sector, so it is replaced atomically
//   | zero up to 4 KiB   |
//   +--------------------+ bitmap_offset (4096)
//   | grain state map    |   2 bits per grain, bitmap_length bytes (a multiple of 4096)
//   +--------------------+ data_offset (a multiple of 1 MiB, after the map)
//   | data area          |   virtual byte V at data_offset + V
//   +--------------------+ data_offset + virtual_size (<= CoW device size)
//
// Header (offsets in bytes):
//     0  8  magic                 "XDBITMAP"
//     8  4  version               1
//    12  4  header_size           bytes covered by the checksum: 512..4096, a multiple of 512 (512 in version 1)
//    16  4  header_checksum       CRC32C (Castagnoli) of [0, header_size) with this field taken as zero
//    20  4  grain_size            a power of two from 512 to 65536
//    24  8  virtual_size          bytes, a positive multiple of 512; the last grain may be partial
//    32  8  incompatible_features bit 0 CORRUPT (refused until repaired), bit 1 TRANSIENT (never
//                                 persisted: refused); any other bit: refused (a newer format)
//    40  8  compatible_features   bit 0 DIRTY (open for writing; set at open, cleared at a clean close),
//                                 bit 1 STANDALONE (every grain is in the overlay: the base is not needed);
//                                 unknown bits are ignored
//    48  8  bitmap_offset         >= 4096, a multiple of 4096
//    56  8  bitmap_length         a multiple of 4096, >= ceil(grains / 4), <= 1 GiB
//    64  8  data_offset           a multiple of 1 MiB, >= bitmap_offset + bitmap_length
//    72  8  data_length           == virtual_size
//    80  8  base_size             the base's size in bytes when the overlay was made (<= virtual_size);
//                                 the base offered at open must have exactly this size
//    88  2  base_name_length      0..256
//    90 38  reserved              written as zero, ignored
//   128 256 base_name             UTF-8, informational; followed only when a BackingFilePolicy allows it
//   384 128 reserved              written as zero, ignored
//
// Grain state map: grain g is bits (2 * (g mod 4)) .. +1 of byte bitmap_offset + g / 4:
//   0 BASE       never written: read from the base (zeros beyond base_size)
//   1 MAPPED     the overlay's data area holds the whole grain
//   2 DISCARDED  reads as zeros (never as the base)
//   3            invalid: the checker reports it, repair turns it into DISCARDED
// A grain's state sits in one byte, so a state change is atomic on any device that writes whole
// sectors atomically; bits past the last grain must be zero.
//
// Ordering (why a crash is safe): a grain's data reaches the data area, and is flushed, before a
// map block saying MAPPED reaches the disk. The map block is snapshotted before that data flush, so
// the snapshot only holds grains whose data writes had completed.
using System.Buffers.Binary;
using System.Numerics;
using System.Text;

namespace XenDisk.Cow.Bitmap;

/// <summary>The numbers of the bitmap overlay format (see the layout at the top of this file).</summary>
public static class BitmapFormat
{
    /// <summary>The eight bytes every overlay starts with: "XDBITMAP".</summary>
    public static ReadOnlySpan<byte> Magic => "XDBITMAP"u8;

    public const uint Version = 1;

    /// <summary>The checksummed header: one 512-byte sector, so that rewriting it is atomic.</summary>
    public const int HeaderSize = 512;

    /// <summary>Bytes reserved for the header before the map: one page, so the map is O_DIRECT-aligned.</summary>
    public const int HeaderRegionSize = 4096;

    /// <summary>The unit in which the map is written back: one page (aligned for O_DIRECT, atomic per sector within).</summary>
    public const int MapBlockSize = 4096;

    /// <summary>The data area starts on a 1 MiB boundary, which keeps guest I/O aligned on RAID stripes and LVM extents.</summary>
    public const long DataAlignment = 1024 * 1024;

    public const int MinimumGrainSize = 512;

    public const int MaximumGrainSize = 64 * 1024;

    public const int DefaultGrainSize = 4096;

    /// <summary>
    /// The largest map accepted (held in memory as one array): 4 Gi grains, i.e. 16 TiB of virtual
    /// disk at 4 KiB grains or 2 TiB at 512-byte grains.
    /// </summary>
    public const long MaximumMapLength = 1L << 30;

    public const int MaximumBaseNameLength = 256;

    public const ulong IncompatibleCorrupt = 1UL << 0;
    public const ulong IncompatibleTransient = 1UL << 1;
    public const ulong KnownIncompatible = IncompatibleCorrupt | IncompatibleTransient;

    public const ulong CompatibleDirty = 1UL << 0;
    public const ulong CompatibleStandalone = 1UL << 1;

    internal const int MagicOffset = 0;
    internal const int VersionOffset = 8;
    internal const int HeaderSizeOffset = 12;
    internal const int ChecksumOffset = 16;
    internal const int GrainSizeOffset = 20;
    internal const int VirtualSizeOffset = 24;
    internal const int IncompatibleOffset = 32;
    internal const int CompatibleOffset = 40;
    internal const int BitmapOffsetOffset = 48;
    internal const int BitmapLengthOffset = 56;
    internal const int DataOffsetOffset = 64;
    internal const int DataLengthOffset = 72;
    internal const int BaseSizeOffset = 80;
    internal const int BaseNameLengthOffset = 88;
    internal const int BaseNameOffset = 128;

    /// <summary>Grains per map byte (two bits each).</summary>
    internal const int GrainsPerByte = 4;

    /// <summary>Bytes of map held in memory per GiB of virtual disk at <paramref name="grainSize"/>.</summary>
    public static long MapBytesPerGiB(int grainSize) => (1L << 30) / grainSize / GrainsPerByte;

    /// <summary>The number of grains of a disk (the last may be partial). <paramref name="virtualSize"/> must be positive.</summary>
    internal static long GrainCount(long virtualSize, int grainSize) => (virtualSize - 1) / grainSize + 1;

    /// <summary>The map length for <paramref name="grains"/> grains, in whole map blocks.</summary>
    internal static long MapLength(long grains)
    {
        long bytes = (grains + GrainsPerByte - 1) / GrainsPerByte;
        return (bytes + MapBlockSize - 1) / MapBlockSize * MapBlockSize;
    }

    internal static bool IsGrainSize(long size) => size is >= MinimumGrainSize and <= MaximumGrainSize && BitOperations.IsPow2(size);

    /// <summary>CRC32C (Castagnoli, reflected, initial and final value all ones): the checksum of iSCSI, ext4 and btrfs.</summary>
    public static uint Crc32C(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFF_FFFF;
        while (data.Length >= sizeof(ulong))
        {
            crc = BitOperations.Crc32C(crc, BinaryPrimitives.ReadUInt64LittleEndian(data));
            data = data[sizeof(ulong)..];
        }
        foreach (byte value in data)
        {
            crc = BitOperations.Crc32C(crc, value);
        }
        return ~crc;
    }

    /// <summary>The header checksum: CRC32C over the header with the checksum field taken as zero.</summary>
    internal static uint HeaderChecksum(ReadOnlySpan<byte> header)
    {
        Span<byte> zero = stackalloc byte[4];
        zero.Clear();
        uint crc = 0xFFFF_FFFF;
        crc = Continue(crc, header[..ChecksumOffset]);
        crc = Continue(crc, zero);
        crc = Continue(crc, header[(ChecksumOffset + 4)..]);
        return ~crc;

        static uint Continue(uint crc, ReadOnlySpan<byte> data)
        {
            foreach (byte value in data)
            {
                crc = BitOperations.Crc32C(crc, value);
            }
            return crc;
        }
    }
}

/// <summary>The state of one grain in the map (two bits).</summary>
public enum GrainState : byte
{
    /// <summary>Never written: reads come from the base.</summary>
    Base = 0,

    /// <summary>The overlay's data area holds the grain.</summary>
    Mapped = 1,

    /// <summary>Discarded: reads as zeros.</summary>
    Discarded = 2,

    /// <summary>Not a valid state: only corruption produces it.</summary>
    Invalid = 3,
}

/// <summary>A parsed and validated header. Every field has passed the checks in <see cref="TryParse"/>.</summary>
public sealed record BitmapHeader
{
    public required int GrainSize { get; init; }
    public required long VirtualSize { get; init; }
    public ulong IncompatibleFeatures { get; init; }
    public ulong CompatibleFeatures { get; init; }
    public long BitmapOffset { get; init; } = BitmapFormat.HeaderRegionSize;
    public required long BitmapLength { get; init; }
    public required long DataOffset { get; init; }
    public required long BaseSize { get; init; }
    public string BaseName { get; init; } = "";

    public long GrainCount => BitmapFormat.GrainCount(VirtualSize, GrainSize);

    public bool IsDirty => (CompatibleFeatures & BitmapFormat.CompatibleDirty) != 0;

    public bool IsStandalone => (CompatibleFeatures & BitmapFormat.CompatibleStandalone) != 0;

    /// <summary>The smallest CoW device that holds this overlay.</summary>
    public long RequiredDeviceSize => DataOffset + VirtualSize;

    /// <summary>The layout <see cref="BitmapOverlay.Create"/> writes for a disk of <paramref name="virtualSize"/> bytes.</summary>
    internal static BitmapHeader ForNewOverlay(long virtualSize, int grainSize, long baseSize, string baseName, bool transient)
    {
        long mapLength = BitmapFormat.MapLength(BitmapFormat.GrainCount(virtualSize, grainSize));
        long mapEnd = BitmapFormat.HeaderRegionSize + mapLength;
        return new BitmapHeader
        {
            GrainSize = grainSize,
            VirtualSize = virtualSize,
            IncompatibleFeatures = transient ? BitmapFormat.IncompatibleTransient : 0,
            BitmapLength = mapLength,
            DataOffset = (mapEnd + BitmapFormat.DataAlignment - 1) / BitmapFormat.DataAlignment * BitmapFormat.DataAlignment,
            BaseSize = baseSize,
            BaseName = baseName,
        };
    }

    /// <summary>Writes the header, with its checksum, into the first <see cref="BitmapFormat.HeaderSize"/> bytes of <paramref name="destination"/>.</summary>
    public void WriteTo(Span<byte> destination)
    {
        Span<byte> header = destination[..BitmapFormat.HeaderSize];
        header.Clear();
        BitmapFormat.Magic.CopyTo(header);
        BinaryPrimitives.WriteUInt32LittleEndian(header[BitmapFormat.VersionOffset..], BitmapFormat.Version);
        BinaryPrimitives.WriteUInt32LittleEndian(header[BitmapFormat.HeaderSizeOffset..], BitmapFormat.HeaderSize);
        BinaryPrimitives.WriteUInt32LittleEndian(header[BitmapFormat.GrainSizeOffset..], (uint)GrainSize);
        BinaryPrimitives.WriteInt64LittleEndian(header[BitmapFormat.VirtualSizeOffset..], VirtualSize);
        BinaryPrimitives.WriteUInt64LittleEndian(header[BitmapFormat.IncompatibleOffset..], IncompatibleFeatures);
        BinaryPrimitives.WriteUInt64LittleEndian(header[BitmapFormat.CompatibleOffset..], CompatibleFeatures);
        BinaryPrimitives.WriteInt64LittleEndian(header[BitmapFormat.BitmapOffsetOffset..], BitmapOffset);
        BinaryPrimitives.WriteInt64LittleEndian(header[BitmapFormat.BitmapLengthOffset..], BitmapLength);
        BinaryPrimitives.WriteInt64LittleEndian(header[BitmapFormat.DataOffsetOffset..], DataOffset);
        BinaryPrimitives.WriteInt64LittleEndian(header[BitmapFormat.DataLengthOffset..], VirtualSize);
        BinaryPrimitives.WriteInt64LittleEndian(header[BitmapFormat.BaseSizeOffset..], BaseSize);
        int nameLength = Encoding.UTF8.GetBytes(BaseName, header.Slice(BitmapFormat.BaseNameOffset, BitmapFormat.MaximumBaseNameLength));
        BinaryPrimitives.WriteUInt16LittleEndian(header[BitmapFormat.BaseNameLengthOffset..], (ushort)nameLength);
        BinaryPrimitives.WriteUInt32LittleEndian(header[BitmapFormat.ChecksumOffset..], BitmapFormat.HeaderChecksum(header));
    }

    /// <summary>
    /// Parses and validates a header read from a CoW device of <paramref name="deviceSize"/> bytes.
    /// Returns null and the header, or an operator-readable description of the first problem found.
    /// Every size and offset is bounded before it takes part in any arithmetic, and no untrusted
    /// numbers are multiplied. Feature flags are not judged here (the checker reads corrupt images).
    /// </summary>
    /// <param name="bytes">At least <see cref="BitmapFormat.HeaderRegionSize"/> bytes from the start of the device (fewer when the device is smaller).</param>
    public static string? TryParse(ReadOnlySpan<byte> bytes, long deviceSize, out BitmapHeader? header)
    {
        header = null;
        if (deviceSize < BitmapFormat.HeaderRegionSize || bytes.Length < BitmapFormat.HeaderSize)
        {
            return $"the device is {deviceSize} bytes, too small to hold a bitmap overlay header";
        }
        if (!bytes[..8].SequenceEqual(BitmapFormat.Magic))
        {
            return "no bitmap overlay here (the magic \"XDBITMAP\" is missing)";
        }
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(bytes[BitmapFormat.VersionOffset..]);
        if (version != BitmapFormat.Version)
        {
            return $"unsupported format version {version} (this build reads version {BitmapFormat.Version})";
        }
        uint headerSize = BinaryPrimitives.ReadUInt32LittleEndian(bytes[BitmapFormat.HeaderSizeOffset..]);
        if (headerSize < BitmapFormat.HeaderSize || headerSize > BitmapFormat.HeaderRegionSize || headerSize % 512 != 0 || headerSize > bytes.Length)
        {
            return $"header size {headerSize} is not a multiple of 512 from {BitmapFormat.HeaderSize} to {BitmapFormat.HeaderRegionSize}";
        }
        ReadOnlySpan<byte> checksummed = bytes[..(int)headerSize];
        uint stored = BinaryPrimitives.ReadUInt32LittleEndian(bytes[BitmapFormat.ChecksumOffset..]);
        uint computed = BitmapFormat.HeaderChecksum(checksummed);
        if (stored != computed)
        {
            return $"header checksum mismatch (stored 0x{stored:x8}, computed 0x{computed:x8}): the header is damaged";
        }

        uint grainSize = BinaryPrimitives.ReadUInt32LittleEndian(bytes[BitmapFormat.GrainSizeOffset..]);
        if (!BitmapFormat.IsGrainSize(grainSize))
        {
            return $"grain size {grainSize} is not a power of two from {BitmapFormat.MinimumGrainSize} to {BitmapFormat.MaximumGrainSize}";
        }
        long virtualSize = BinaryPrimitives.ReadInt64LittleEndian(bytes[BitmapFormat.VirtualSizeOffset..]);
        if (virtualSize <= 0 || virtualSize % 512 != 0)
        {
            return $"virtual size {virtualSize} is not a positive multiple of 512";
        }
        if (virtualSize > deviceSize)
        {
            return $"virtual size {virtualSize} is larger than the whole CoW device ({deviceSize} bytes)";
        }
        long grains = BitmapFormat.GrainCount(virtualSize, (int)grainSize);
        long neededMap = (grains + BitmapFormat.GrainsPerByte - 1) / BitmapFormat.GrainsPerByte;

        long mapOffset = BinaryPrimitives.ReadInt64LittleEndian(bytes[BitmapFormat.BitmapOffsetOffset..]);
        long mapLength = BinaryPrimitives.ReadInt64LittleEndian(bytes[BitmapFormat.BitmapLengthOffset..]);
        if (mapOffset < BitmapFormat.HeaderRegionSize || mapOffset % BitmapFormat.MapBlockSize != 0)
        {
            return $"bitmap offset {mapOffset} overlaps the header or is not a multiple of {BitmapFormat.MapBlockSize}";
        }
        if (mapLength <= 0 || mapLength > BitmapFormat.MaximumMapLength || mapLength % BitmapFormat.MapBlockSize != 0)
        {
            return $"bitmap length {mapLength} is not a positive multiple of {BitmapFormat.MapBlockSize} up to {BitmapFormat.MaximumMapLength}";
        }
        if (mapLength < neededMap)
        {
            return $"bitmap length {mapLength} is too short for {grains} grains ({neededMap} bytes needed)";
        }
        if (mapOffset > deviceSize || mapLength > deviceSize - mapOffset)
        {
            return $"the bitmap ({mapLength} bytes at {mapOffset}) lies beyond the end of the CoW device ({deviceSize} bytes)";
        }

        long dataOffset = BinaryPrimitives.ReadInt64LittleEndian(bytes[BitmapFormat.DataOffsetOffset..]);
        long dataLength = BinaryPrimitives.ReadInt64LittleEndian(bytes[BitmapFormat.DataLengthOffset..]);
        if (dataOffset <= 0 || dataOffset % BitmapFormat.DataAlignment != 0)
        {
            return $"data area offset {dataOffset} is not a positive multiple of 1 MiB";
        }
        // Both ends are now within the device, so the sum cannot overflow.
        if (dataOffset < mapOffset + mapLength)
        {
            return $"the data area (at {dataOffset}) overlaps the bitmap ({mapLength} bytes at {mapOffset})";
        }
        if (dataLength != virtualSize)
        {
            return $"data area length {dataLength} differs from the virtual size {virtualSize}";
        }
        if (dataOffset > deviceSize || virtualSize > deviceSize - dataOffset)
        {
            long needed = dataOffset <= long.MaxValue - virtualSize ? dataOffset + virtualSize : long.MaxValue;
            return $"the CoW device is too small: {deviceSize} bytes, the overlay needs {needed} (data area at {dataOffset} plus {virtualSize} bytes)";
        }

        long baseSize = BinaryPrimitives.ReadInt64LittleEndian(bytes[BitmapFormat.BaseSizeOffset..]);
        if (baseSize < 0 || baseSize > virtualSize || baseSize % 512 != 0)
        {
            return $"base size {baseSize} is not a multiple of 512 from 0 to the virtual size {virtualSize}";
        }
        ushort nameLength = BinaryPrimitives.ReadUInt16LittleEndian(bytes[BitmapFormat.BaseNameLengthOffset..]);
        if (nameLength > BitmapFormat.MaximumBaseNameLength)
        {
            return $"base name length {nameLength} exceeds {BitmapFormat.MaximumBaseNameLength}";
        }
        string baseName;
        try
        {
            baseName = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true)
                .GetString(bytes.Slice(BitmapFormat.BaseNameOffset, nameLength));
        }
        catch (DecoderFallbackException)
        {
            return "the base name is not valid UTF-8";
        }
        if (baseName.Contains('\0', StringComparison.Ordinal))
        {
            return "the base name contains a NUL character";
        }

        header = new BitmapHeader
        {
            GrainSize = (int)grainSize,
            VirtualSize = virtualSize,
            IncompatibleFeatures = BinaryPrimitives.ReadUInt64LittleEndian(bytes[BitmapFormat.IncompatibleOffset..]),
            CompatibleFeatures = BinaryPrimitives.ReadUInt64LittleEndian(bytes[BitmapFormat.CompatibleOffset..]),
            BitmapOffset = mapOffset,
            BitmapLength = mapLength,
            DataOffset = dataOffset,
            BaseSize = baseSize,
            BaseName = baseName,
        };
        return null;
    }

    /// <summary>Why the feature flags forbid using the overlay, or null.</summary>
    internal string? DescribeIncompatibleFeatures()
    {
        ulong unknown = IncompatibleFeatures & ~BitmapFormat.KnownIncompatible;
        if (unknown != 0)
        {
            return $"unknown incompatible features 0x{unknown:x} (made by a newer version)";
        }
        if ((IncompatibleFeatures & BitmapFormat.IncompatibleTransient) != 0)
        {
            return "it was a transient overlay, whose contents were never persisted";
        }
        if ((IncompatibleFeatures & BitmapFormat.IncompatibleCorrupt) != 0)
        {
            return "it is marked corrupt; run the bitmap checker with repair";
        }
        return null;
    }
}
