using System.Buffers.Binary;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2;

/// <summary>Malformed headers are refused with a message that names the problem; mutated metadata never crashes, hangs or writes outside the image.</summary>
public class HostileHeaderTests
{
    private static byte[] ValidImage(int clusterSize = 65536, bool backing = false)
    {
        GrowableMemoryDevice overlay = TestData.NewOverlay(1 << 20, clusterSize, null, backing);
        return overlay.ToArray();
    }

    public static TheoryData<int, int, ulong, string> Mutations() => new()
    {
        // offset, field width in bytes, new value, expected words in the message
        { 0, 4, 0x12345678, "bad magic" },
        { 4, 4, 1, "unsupported qcow2 version 1" },
        { 4, 4, 4, "unsupported qcow2 version 4" },
        { 20, 4, 8, "cluster_bits 8 is out of range" },
        { 20, 4, 22, "cluster_bits 22 is out of range" },
        { 20, 4, 0xFFFFFFFF, "cluster_bits 4294967295 is out of range" },
        { 36, 4, 0x7FFFFFFF, "l1_size 2147483647 exceeds" },
        { 36, 4, 0xFFFFFFFF, "l1_size 4294967295 exceeds" },
        { 36, 4, 0x00400000, "L1 table" }, // 4 Mi entries: within the limit, beyond the file
        { 40, 8, 0x7FFF_FFFF_FFFF_0000, "beyond the end of the file" },
        { 40, 8, 0x10200, "not aligned" },
        { 40, 8, 0, "overlap the header" },
        { 48, 8, 0x10000, "overlaps" },
        { 48, 8, 0xFFFF_FFFF_FFFF_0000, "refcount table" },
        { 56, 4, 0, "refcount_table_clusters 0" },
        { 56, 4, 0xFFFFFFFF, "refcount_table_clusters 4294967295" },
        { 60, 4, 0xFFFFFFFF, "nb_snapshots 4294967295 exceeds" },
        { 60, 4, 1, "snapshot table" },
        { 72, 8, 1UL << 5, "unknown incompatible feature bit 5" },
        { 72, 8, 1UL << 40, "unknown incompatible feature bit 40" },
        { 72, 8, 1UL << 2, "external data file" },
        { 32, 4, 1, "encrypted (crypt_method AES)" },
        { 32, 4, 2, "encrypted (crypt_method LUKS)" },
        { 100, 4, 100, "header_length 100 is invalid" },
        { 100, 4, 0x10008, "header_length" },
        { 96, 4, 7, "refcount_order 7 is out of range" },
        { 24, 8, 1UL << 62, "exceeds the limit of 2^61" },
        { 24, 8, 1UL << 40, "too small for the virtual size" },
        { 8, 8, 0x20000, "backing file name" },
        { 16, 4, 5000, "backing_file_size 5000" },
    };

    [Theory]
    [MemberData(nameof(Mutations))]
    public void Malformed_header_is_refused_with_a_message_naming_the_problem(int offset, int width, ulong value, string expected)
    {
        byte[] image = ValidImage(backing: offset is 8 or 16);
        Span<byte> field = image.AsSpan(offset, width);
        if (width == 4)
        {
            BinaryPrimitives.WriteUInt32BigEndian(field, (uint)value);
        }
        else
        {
            BinaryPrimitives.WriteUInt64BigEndian(field, value);
        }
        if (offset is 60 && value == 1)
        {
            BinaryPrimitives.WriteUInt64BigEndian(image.AsSpan(64), 0x7000_0000); // snapshot table far beyond the file
        }
        GrowableMemoryDevice overlay = new(image);
        using MemoryBlockDevice backing = new(1 << 20);
        StorageException error = Assert.Throws<StorageException>(() => Qcow2Image.Open(overlay, backing, new Qcow2OpenOptions { OwnsDevices = false }));
        Assert.Contains(expected, error.Message);
        Assert.Equal(image, overlay.ToArray()); // refused before writing anything
    }

    [Fact]
    public void Extended_L2_with_small_clusters_is_refused()
    {
        byte[] image = ValidImage(clusterSize: 8192);
        BinaryPrimitives.WriteUInt64BigEndian(image.AsSpan(72), 1UL << 4);
        StorageException error = Assert.Throws<StorageException>(() => Qcow2Image.Open(new GrowableMemoryDevice(image), null));
        Assert.Contains("extended L2 entries need clusters of at least 16 KiB", error.Message);
    }

    [Fact]
    public void Unknown_incompatible_bit_is_named_from_the_feature_table()
    {
        byte[] image = ValidImage();
        BinaryPrimitives.WriteUInt64BigEndian(image.AsSpan(72), 1UL << 3 | 1UL << 9);
        // Rename the table entry of incompatible bit 3 to describe bit 9 instead.
        int entry = image.AsSpan(0, 4096).IndexOf("compression type"u8) - 2;
        image[entry + 1] = 9;
        StorageException error = Assert.Throws<StorageException>(() => Qcow2Image.Open(new GrowableMemoryDevice(image), null));
        Assert.Contains("unknown incompatible feature bit 9 (compression type)", error.Message);
    }

    [Fact]
    public void Too_small_file_is_refused()
    {
        StorageException error = Assert.Throws<StorageException>(() => Qcow2Image.Open(new GrowableMemoryDevice(new byte[50]), null));
        Assert.Contains("too small", error.Message);
    }

    [Fact]
    public void Missing_backing_device_is_refused()
    {
        StorageException error = Assert.Throws<StorageException>(() => Qcow2Image.Open(new GrowableMemoryDevice(ValidImage(backing: true)), null));
        Assert.Contains("backing file 'base.raw'", error.Message);
    }

    [Fact]
    public void Corrupt_bit_opens_read_only()
    {
        byte[] image = ValidImage();
        BinaryPrimitives.WriteUInt64BigEndian(image.AsSpan(72), 1UL << 1);
        GrowableMemoryDevice overlay = new(image);
        using Qcow2Image opened = Qcow2Image.Open(overlay, null);
        Assert.True(opened.ReadOnly);
        Assert.True(opened.Info.ReadOnly);
        Assert.Contains("corrupt bit", opened.ReadOnlyReason);
        Assert.Equal(IoStatus.ReadOnly, opened.WriteAt(0, new byte[512]));
        Assert.Equal(IoStatus.ReadOnly, opened.Discard(0, 512, false));
        Assert.Equal(image, overlay.ToArray());
    }

    [Fact]
    public void Version2_opens_read_only()
    {
        byte[] image = ValidImage();
        BinaryPrimitives.WriteUInt32BigEndian(image.AsSpan(4), 2);
        using Qcow2Image opened = Qcow2Image.Open(new GrowableMemoryDevice(image), null);
        Assert.True(opened.ReadOnly);
        Assert.Contains("version 2", opened.ReadOnlyReason);
        Assert.All(TestData.ReadAll(opened), b => Assert.Equal(0, b));
    }

    [Fact]
    public void Unknown_autoclear_bits_are_cleared_before_the_first_write()
    {
        byte[] image = ValidImage();
        BinaryPrimitives.WriteUInt64BigEndian(image.AsSpan(88), 0x8000_0000_0000_0001UL);
        GrowableMemoryDevice overlay = new(image);
        using (Qcow2Image opened = Qcow2Image.Open(overlay, null, new Qcow2OpenOptions { OwnsDevices = false }))
        {
            Assert.Equal(0UL, BinaryPrimitives.ReadUInt64BigEndian(overlay.ToArray().AsSpan(88)));
            Assert.Equal(IoStatus.Ok, opened.WriteAt(0, new byte[4096]));
        }
    }

    [Fact]
    public void Dirty_bit_rebuilds_refcounts_on_open()
    {
        GrowableMemoryDevice overlay = TestData.NewOverlay(4 << 20, 65536, null, false);
        byte[] data = TestData.Random(1 << 20, 9);
        using (Qcow2Image image = TestData.Open(overlay, null))
        {
            Assert.Equal(IoStatus.Ok, image.WriteAt(0, data));
        }
        byte[] bytes = overlay.ToArray();
        Qcow2Header header = Qcow2Disk.ReadHeader(overlay);
        // Wipe the refcount table and set the dirty bit: only a rebuild can make this image consistent.
        bytes.AsSpan((int)header.RefcountTableOffset, header.ClusterSize).Clear();
        BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(72), 1);
        GrowableMemoryDevice damaged = new(bytes);
        Assert.False(Qcow2Checker.Check(damaged).IsClean);
        using (Qcow2Image image = TestData.Open(damaged, null))
        {
            Assert.Equal(data, TestData.ReadAll(image).AsSpan(0, data.Length).ToArray());
            Assert.Equal(IoStatus.Ok, image.WriteAt(2 << 20, data));
        }
        Assert.Equal(0UL, BinaryPrimitives.ReadUInt64BigEndian(damaged.ToArray().AsSpan(72)) & 1);
        Qcow2CheckReport report = Qcow2Checker.Check(damaged);
        Assert.True(report.IsClean, string.Join("\n", report.Messages));
    }

    /// <summary>
    /// Random byte mutations of a valid image with data (header, L1, L2 and refcount areas): opening,
    /// reading, writing, discarding, flushing, closing and checking must only ever return results or
    /// refuse with StorageException, and the image may grow only by the clusters the writes need.
    /// </summary>
    [Fact]
    public void Fuzzed_metadata_never_crashes_or_writes_outside_the_image()
    {
        byte[] baseData = TestData.Random(1 << 20, 10);
        GrowableMemoryDevice template = TestData.NewOverlay(1 << 20, 16384, true, true);
        using MemoryBlockDevice backing = TestData.Base(baseData);
        using (Qcow2Image image = TestData.Open(template, backing))
        {
            Assert.Equal(IoStatus.Ok, image.WriteAt(0, TestData.Random(100 * 1024, 11)));
            Assert.Equal(IoStatus.Ok, image.WriteAt(600 * 1024, TestData.Random(8192, 12)));
            Assert.Equal(IoStatus.Ok, image.Discard(32 * 1024, 16 * 1024, false));
        }
        byte[] valid = template.ToArray();
        Random random = new(1234);
        byte[] buffer = new byte[64 * 1024];
        int opened = 0;
        for (int iteration = 0; iteration < 400; iteration++)
        {
            byte[] mutated = (byte[])valid.Clone();
            int mutations = random.Next(1, 6);
            for (int m = 0; m < mutations; m++)
            {
                // Half the mutations hit the header cluster's first 512 bytes, the rest anywhere in the metadata-heavy front of the file.
                int position = random.Next(2) == 0 ? random.Next(512) : random.Next(mutated.Length);
                mutated[position] = random.Next(4) switch { 0 => 0, 1 => 0xFF, _ => (byte)random.Next(256) };
            }
            GrowableMemoryDevice device = new(mutated);
            Qcow2Image image;
            try
            {
                image = Qcow2Image.Open(device, backing, new Qcow2OpenOptions { OwnsDevices = false });
            }
            catch (StorageException)
            {
                continue;
            }
            opened++;
            using (image)
            {
                for (int op = 0; op < 6; op++)
                {
                    long offset = random.Next((1 << 20) / 512) * 512L;
                    int length = (int)Math.Min(buffer.Length, (1 << 20) - offset);
                    switch (random.Next(4))
                    {
                        case 0: image.ReadAt(offset, buffer.AsSpan(0, length)); break;
                        case 1: image.WriteAt(offset, buffer.AsSpan(0, length)); break;
                        case 2: image.Discard(offset, length, false); break;
                        default: image.Flush(); break;
                    }
                }
            }
            // Writes of at most 6 x 64 KiB allocate at most 6 x 5 clusters plus tables: bounded growth.
            Assert.True(device.Info.SizeBytes <= mutated.Length + 64L * 16384, $"iteration {iteration}: the image grew to {device.Info.SizeBytes}");
            Qcow2Checker.Check(device);
        }
        Assert.True(opened > 50, $"only {opened} of 400 mutated images opened; the fuzz loop does not reach the I/O paths");
    }
}
