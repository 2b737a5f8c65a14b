using System.Buffers.Binary;
using XenDisk.Cow.Bitmap;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Bitmap;

/// <summary>The header format, and hostile headers refused with a message naming the problem.</summary>
public sealed class BitmapHeaderTests
{
    // 16 MiB at 512-byte grains: 32768 grains, an 8 KiB map (two map blocks).
    private const long BaseSize = 16L * 1024 * 1024;
    private const int Grain = 512;

    [Fact]
    public void Crc32c_matches_the_published_check_value()
    {
        Assert.Equal(0xE3069283u, BitmapFormat.Crc32C("123456789"u8));
        Assert.Equal(0u, BitmapFormat.Crc32C([]));
    }

    [Fact]
    public void A_created_header_reads_back_with_the_layout_it_describes()
    {
        using var baseDevice = new MemoryBlockDevice(BaseSize);
        using var cow = new MemoryBlockDevice(BitmapOverlay.RequiredCowSize(BaseSize, Grain));
        using (BitmapOverlay.Create(cow, baseDevice, new BitmapCreateOptions { GrainSize = Grain, BaseName = "/srv/golden/base.img" }, new BitmapOverlayOptions { OwnsDevices = false }))
        {
        }
        BitmapHeader header = BitmapOverlay.ReadHeader(cow);
        Assert.Equal("XDBITMAP"u8.ToArray(), cow.Contents[..8].ToArray());
        Assert.Equal(Grain, header.GrainSize);
        Assert.Equal(BaseSize, header.VirtualSize);
        Assert.Equal(BaseSize, header.BaseSize);
        Assert.Equal("/srv/golden/base.img", header.BaseName);
        Assert.Equal(4096, header.BitmapOffset);
        Assert.Equal(8192, header.BitmapLength);
        Assert.Equal(1024 * 1024, header.DataOffset);
        Assert.Equal(header.DataOffset + BaseSize, cow.Info.SizeBytes);
        Assert.False(header.IsDirty);
        Assert.Equal(0ul, header.IncompatibleFeatures);
    }

    [Fact]
    public void Creating_on_a_device_too_small_or_with_a_bad_grain_is_refused()
    {
        using var baseDevice = new MemoryBlockDevice(BaseSize);
        using var small = new MemoryBlockDevice(BitmapOverlay.RequiredCowSize(BaseSize, Grain) - 512);
        var options = new BitmapOverlayOptions { OwnsDevices = false };
        var tooSmall = Assert.Throws<StorageException>(() => BitmapOverlay.Create(small, baseDevice, new BitmapCreateOptions { GrainSize = Grain }, options));
        Assert.Contains("too small", tooSmall.Message, StringComparison.Ordinal);
        using var cow = new MemoryBlockDevice(BitmapOverlay.RequiredCowSize(BaseSize, Grain));
        foreach (int grain in new[] { 0, 256, 3000, 128 * 1024 })
        {
            var bad = Assert.Throws<StorageException>(() => BitmapOverlay.Create(cow, baseDevice, new BitmapCreateOptions { GrainSize = grain }, options));
            Assert.Contains($"grain size {grain}", bad.Message, StringComparison.Ordinal);
        }
        var smaller = Assert.Throws<StorageException>(() => BitmapOverlay.Create(cow, baseDevice, new BitmapCreateOptions { GrainSize = Grain, VirtualSize = BaseSize - 512 }, options));
        Assert.Contains("at least the base", smaller.Message, StringComparison.Ordinal);
    }

    public enum Field
    {
        Magic = 0,
        Version = 8,
        HeaderSize = 12,
        Checksum = 16,
        GrainSize = 20,
        VirtualSize = 24,
        Incompatible = 32,
        Compatible = 40,
        BitmapOffset = 48,
        BitmapLength = 56,
        DataOffset = 64,
        DataLength = 72,
        BaseSize = 80,
        BaseNameLength = 88,
    }

    public static TheoryData<Field, long, string> HostileHeaders() => new()
    {
        { Field.Magic, 0x5041_4D54_4942_4459, "magic" },
        { Field.Version, 0, "unsupported format version 0" },
        { Field.Version, 2, "unsupported format version 2" },
        { Field.HeaderSize, 0, "header size 0" },
        { Field.HeaderSize, 100, "header size 100" },
        { Field.HeaderSize, 8192, "header size 8192" },
        { Field.HeaderSize, 0xFFFF_FFFF, "header size 4294967295" },
        { Field.GrainSize, 0, "grain size 0" },
        { Field.GrainSize, 256, "grain size 256" },
        { Field.GrainSize, 3000, "grain size 3000" },
        { Field.GrainSize, 131072, "grain size 131072" },
        { Field.GrainSize, 0x8000_0000, "grain size 2147483648" },
        { Field.VirtualSize, 0, "virtual size 0" },
        { Field.VirtualSize, -512, "virtual size -512" },
        { Field.VirtualSize, 1000, "virtual size 1000" },
        { Field.VirtualSize, long.MaxValue & ~511L, "larger than the whole CoW device" },
        { Field.VirtualSize, BaseSize + 1024 * 1024, "too short for 34816 grains" },
        { Field.BitmapOffset, 0, "overlaps the header" },
        { Field.BitmapOffset, 4097, "bitmap offset 4097" },
        { Field.BitmapOffset, long.MinValue, "overlaps the header" },
        { Field.BitmapOffset, long.MaxValue & ~4095L, "beyond the end of the CoW device" },
        { Field.BitmapLength, 0, "bitmap length 0" },
        { Field.BitmapLength, -4096, "bitmap length -4096" },
        { Field.BitmapLength, 4095, "bitmap length 4095" },
        { Field.BitmapLength, 4096, "too short for 32768 grains" },
        { Field.BitmapLength, 1L << 40, "bitmap length 1099511627776" },
        { Field.BitmapLength, 2 * 1024 * 1024, "overlaps the bitmap" },
        { Field.DataOffset, 0, "data area offset 0" },
        { Field.DataOffset, 1024 * 1024 + 4096, "not a positive multiple of 1 MiB" },
        { Field.DataOffset, -1024 * 1024, "data area offset -1048576" },
        { Field.DataOffset, 2 * 1024 * 1024, "the CoW device is too small" },
        { Field.DataOffset, long.MaxValue & ~(1024L * 1024 - 1), "the CoW device is too small" },
        { Field.DataLength, BaseSize - 512, "data area length" },
        { Field.BaseSize, BaseSize + 512, "base size" },
        { Field.BaseSize, -512, "base size -512" },
        { Field.BaseSize, BaseSize - 512, "made over a" },
        { Field.BaseNameLength, 257, "base name length 257" },
        { Field.BaseNameLength, 0xFFFF, "base name length 65535" },
        { Field.Incompatible, 1L << 7, "unknown incompatible features 0x80" },
        { Field.Incompatible, 1, "marked corrupt" },
        { Field.Incompatible, 2, "transient" },
    };

    [Theory]
    [MemberData(nameof(HostileHeaders))]
    public void A_hostile_header_is_refused_with_a_message_naming_the_problem(Field field, long value, string expected)
    {
        using var baseDevice = new MemoryBlockDevice(BaseSize);
        using MemoryBlockDevice cow = CreateOverlay(baseDevice);
        Span<byte> header = cow.Contents[..512];
        int offset = (int)field;
        if (field is Field.Version or Field.HeaderSize or Field.GrainSize)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(header[offset..], (uint)value);
        }
        else if (field == Field.BaseNameLength)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(header[offset..], (ushort)value);
        }
        else
        {
            BinaryPrimitives.WriteInt64LittleEndian(header[offset..], value);
        }
        Reseal(header);
        var refused = Assert.Throws<StorageException>(() => BitmapOverlay.Open(cow, baseDevice, new BitmapOverlayOptions { OwnsDevices = false }));
        Assert.Contains(expected, refused.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(20)]
    [InlineData(130)]
    [InlineData(511)]
    public void A_flipped_bit_anywhere_in_the_header_fails_the_checksum(int offset)
    {
        using var baseDevice = new MemoryBlockDevice(BaseSize);
        using MemoryBlockDevice cow = CreateOverlay(baseDevice);
        cow.Contents[offset] ^= 0x10;
        var refused = Assert.Throws<StorageException>(() => BitmapOverlay.Open(cow, baseDevice, new BitmapOverlayOptions { OwnsDevices = false }));
        Assert.Contains(offset < 8 ? "magic" : "checksum mismatch", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Invalid_utf8_in_the_base_name_is_refused()
    {
        using var baseDevice = new MemoryBlockDevice(BaseSize);
        using MemoryBlockDevice cow = CreateOverlay(baseDevice);
        Span<byte> header = cow.Contents[..512];
        BinaryPrimitives.WriteUInt16LittleEndian(header[88..], 2);
        header[128] = 0xC3;
        header[129] = 0x28;
        Reseal(header);
        var refused = Assert.Throws<StorageException>(() => BitmapOverlay.Open(cow, baseDevice, new BitmapOverlayOptions { OwnsDevices = false }));
        Assert.Contains("not valid UTF-8", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Devices_too_small_for_any_header_or_for_the_data_area_are_refused()
    {
        using var baseDevice = new MemoryBlockDevice(BaseSize);
        using var tiny = new MemoryBlockDevice(2048);
        var refused = Assert.Throws<StorageException>(() => BitmapOverlay.Open(tiny, baseDevice));
        Assert.Contains("too small to hold a bitmap overlay header", refused.Message, StringComparison.Ordinal);

        using MemoryBlockDevice cow = CreateOverlay(baseDevice);
        using var truncated = new MemoryBlockDevice(cow.Info.SizeBytes - 1024 * 1024);
        cow.Contents[..(int)truncated.Info.SizeBytes].CopyTo(truncated.Contents);
        refused = Assert.Throws<StorageException>(() => BitmapOverlay.Open(truncated, baseDevice, new BitmapOverlayOptions { OwnsDevices = false }));
        Assert.Contains("the CoW device is too small", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_missing_or_wrong_sized_base_is_refused()
    {
        using var baseDevice = new MemoryBlockDevice(BaseSize);
        using MemoryBlockDevice cow = CreateOverlay(baseDevice);
        var options = new BitmapOverlayOptions { OwnsDevices = false };
        var none = Assert.Throws<StorageException>(() => BitmapOverlay.Open(cow, null, options));
        Assert.Contains("needs its base", none.Message, StringComparison.Ordinal);
        using var other = new MemoryBlockDevice(BaseSize * 2);
        var wrong = Assert.Throws<StorageException>(() => BitmapOverlay.Open(cow, other, options));
        Assert.Contains("made over a", wrong.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_stored_base_name_is_followed_only_when_the_policy_allows_it()
    {
        using var baseDevice = new MemoryBlockDevice(BaseSize);
        using var cow = new MemoryBlockDevice(BitmapOverlay.RequiredCowSize(BaseSize, Grain));
        using (BitmapOverlay.Create(cow, baseDevice, new BitmapCreateOptions { GrainSize = Grain, BaseName = "/srv/golden/base.img" }, new BitmapOverlayOptions { OwnsDevices = false }))
        {
        }
        List<string> opened = [];
        IBlockDevice Opener(string path)
        {
            opened.Add(path);
            return new MemoryBlockDevice(BaseSize);
        }
        var refused = Assert.Throws<StorageException>(() => BitmapOverlay.OpenWithStoredBase(cow, new BitmapOverlayOptions { OwnsDevices = false }, Opener));
        Assert.Contains("does not allow", refused.Message, StringComparison.Ordinal);
        Assert.Empty(opened);

        var allowed = new BitmapOverlayOptions { BackingPolicy = Policies.BackingFilePolicy.InDirectories("/srv/golden"), OwnsDevices = false };
        using (BitmapOverlay overlay = BitmapOverlay.OpenWithStoredBase(cow, allowed, Opener))
        {
            Assert.Equal(BaseSize, overlay.Info.SizeBytes);
        }
        Assert.Equal(["/srv/golden/base.img"], opened);
    }

    [Fact]
    public void Fuzzed_headers_never_crash_or_hang_open_or_the_checker()
    {
        using var baseDevice = new MemoryBlockDevice(BaseSize);
        using MemoryBlockDevice cow = CreateOverlay(baseDevice);
        byte[] pristine = cow.Contents[..4096].ToArray();
        var random = new Random(2024);
        int opened = 0;
        for (int round = 0; round < 3000; round++)
        {
            Span<byte> header = cow.Contents[..4096];
            pristine.CopyTo(header);
            int mutations = 1 + random.Next(4);
            for (int m = 0; m < mutations; m++)
            {
                // Mostly the meaningful first 128 bytes; sometimes a whole field is replaced by an extreme.
                int offset = random.Next(4) == 0 ? random.Next(512) : random.Next(128);
                if (random.Next(3) == 0)
                {
                    long[] extremes = [0, -1, long.MaxValue, long.MinValue, 1L << 32, 4096, 1024 * 1024];
                    BinaryPrimitives.WriteInt64LittleEndian(header[Math.Min(offset & ~7, 504)..], extremes[random.Next(extremes.Length)]);
                }
                else
                {
                    header[offset] = (byte)random.Next(256);
                }
            }
            if (random.Next(4) != 0)
            {
                Reseal(header[..512]);
            }
            try
            {
                using BitmapOverlay overlay = BitmapOverlay.Open(cow, baseDevice, new BitmapOverlayOptions { ReadOnly = true, OwnsDevices = false });
                byte[] first = new byte[overlay.Info.LogicalSectorSize];
                Assert.Equal(IoStatus.Ok, overlay.ReadAt(0, first));
                opened++;
            }
            catch (StorageException)
            {
            }
            BitmapChecker.Check(cow);
        }
        // Some mutations hit only ignored bytes: those must still open.
        Assert.True(opened > 0);
    }

    private static MemoryBlockDevice CreateOverlay(IBlockDevice baseDevice)
    {
        var cow = new MemoryBlockDevice(BitmapOverlay.RequiredCowSize(BaseSize, Grain));
        using (BitmapOverlay.Create(cow, baseDevice, new BitmapCreateOptions { GrainSize = Grain }, new BitmapOverlayOptions { OwnsDevices = false }))
        {
        }
        return cow;
    }

    /// <summary>Recomputes the checksum, so that a test reaches the check after it.</summary>
    private static void Reseal(Span<byte> header)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(header[16..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(header[16..], BitmapFormat.Crc32C(header[..512]));
    }
}
