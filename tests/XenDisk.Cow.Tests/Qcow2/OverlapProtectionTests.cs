using System.Buffers.Binary;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2;

/// <summary>
/// Metadata overlap protection against images whose metadata lies: made by qemu-img and qemu-io,
/// then corrupted with small byte patches. Every would-be overlap must fail its request, set the
/// corrupt bit, log one line, and leave everything acknowledged and flushed before it readable.
/// </summary>
[Trait(Needs.Key, Needs.Qemu)]
public class OverlapProtectionTests
{
    /// <summary>What qemu-io writes before the image is corrupted: (offset, length, pattern).</summary>
    private static readonly (long Offset, int Length, byte Pattern)[] QemuWrites = [(0, 128 << 10, 0x11), (1 << 20, 64 << 10, 0x22)];

    public enum Damage
    {
        /// <summary>The L1 table's refcount is 0: the allocator would hand the L1 table out as a data cluster.</summary>
        L1TableRefcountZero,
        /// <summary>The L2 table's refcount is 0: the allocator would hand it out.</summary>
        L2TableRefcountZero,
        /// <summary>The refcount block's own refcount is 0.</summary>
        RefcountBlockRefcountZero,
        /// <summary>Guest cluster 0's L2 entry points at the L2 table itself.</summary>
        DataEntryPointsAtL2Table,
        /// <summary>Guest cluster 0's L2 entry points at the refcount block.</summary>
        DataEntryPointsAtRefcountBlock,
        /// <summary>Guest cluster 0's L2 entry points at the L1 table.</summary>
        DataEntryPointsAtL1Table,
        /// <summary>The refcount table's first entry points at the L2 table.</summary>
        RefcountTablePointsAtL2Table,
        /// <summary>The data cluster of guest offset 1 MiB has refcount 0: the allocator would hand out live guest data.</summary>
        DataClusterRefcountZero,
    }

    /// <summary>The write that runs into the damage: a first write (allocation) or a rewrite of guest cluster 0 (in place).</summary>
    private static long TriggerOffset(Damage damage) => damage switch
    {
        Damage.DataEntryPointsAtL2Table or Damage.DataEntryPointsAtRefcountBlock or Damage.DataEntryPointsAtL1Table => 0,
        _ => 4 << 20,
    };

    [Theory]
    [InlineData(Damage.L1TableRefcountZero)]
    [InlineData(Damage.L2TableRefcountZero)]
    [InlineData(Damage.RefcountBlockRefcountZero)]
    [InlineData(Damage.DataEntryPointsAtL2Table)]
    [InlineData(Damage.DataEntryPointsAtRefcountBlock)]
    [InlineData(Damage.DataEntryPointsAtL1Table)]
    [InlineData(Damage.RefcountTablePointsAtL2Table)]
    [InlineData(Damage.DataClusterRefcountZero)]
    public void A_write_onto_metadata_fails_marks_the_image_corrupt_and_keeps_flushed_data(Damage damage)
    {
        using TempDirectory directory = new();
        string path = MakeImage(directory);
        Layout layout = Layout.Of(path);
        Corrupt(path, layout, damage);
        byte[] before = File.ReadAllBytes(path);
        // A write that stays clear of the damage, acknowledged and flushed before the damage is hit.
        long safeOffset = damage is Damage.DataEntryPointsAtL2Table or Damage.DataEntryPointsAtRefcountBlock or Damage.DataEntryPointsAtL1Table ? 1 << 20 : 0;

        RecordingLogger log = new();
        using (Qcow2Image image = Qcow2Disk.Open(path, new Qcow2OpenOptions { Logger = log }))
        {
            Assert.False(image.ReadOnly);
            Assert.Equal(IoStatus.Ok, image.WriteAt(safeOffset, Enumerable.Repeat((byte)0x33, 4096).ToArray()));
            Assert.Equal(IoStatus.Ok, image.Flush());

            Assert.Equal(IoStatus.IoError, image.WriteAt(TriggerOffset(damage), Enumerable.Repeat((byte)0x62, 64 << 10).ToArray()));
            Assert.NotNull(image.Failure);
            Assert.Contains("corrupt", image.LastError);
            // Nothing else is written: not another write, not a flush's write-back.
            Assert.Equal(IoStatus.IoError, image.WriteAt(8 << 20, new byte[4096]));
            Assert.Equal(IoStatus.IoError, image.Flush());
            Assert.Equal(IoStatus.IoError, image.Close());
        }
        Assert.Single(log.Lines);
        Assert.Contains(path, log.Lines[0]);

        // The corrupt bit is on disk (QEMU sees it too), and no metadata moved: everything but the
        // header's feature bits and the flushed write is as it was.
        string info = QemuTools.RunOk(QemuTools.QemuImg, "info", "--output=json", path);
        using (JsonDocument json = JsonDocument.Parse(info))
        {
            Assert.True(json.RootElement.GetProperty("format-specific").GetProperty("data").GetProperty("corrupt").GetBoolean());
        }
        AssertMetadataUnchanged(before, File.ReadAllBytes(path), layout);

        // Read-only opens still work, as in QEMU, and read what was acknowledged and flushed.
        using (Qcow2Image image = Qcow2Disk.Open(path, new Qcow2OpenOptions()))
        {
            Assert.True(image.ReadOnly);
            Assert.Contains("corrupt bit", image.ReadOnlyReason);
            byte[] safe = new byte[4096];
            Assert.Equal(IoStatus.Ok, image.ReadAt(safeOffset, safe));
            Assert.All(safe, b => Assert.Equal(0x33, b));
            byte[] data = new byte[64 << 10];
            Assert.Equal(IoStatus.Ok, image.ReadAt(1 << 20, data));
            Assert.All(data.AsSpan(safeOffset == 1 << 20 ? 4096 : 0).ToArray(), b => Assert.Equal(0x22, b));
        }
        string read = QemuTools.RunOk(QemuTools.QemuIo, "-r", "-f", "qcow2", "-c", $"read -P 0x33 {safeOffset} 4k", path);
        Assert.DoesNotContain("verification failed", read);
    }

    [Fact]
    public void The_issue_reproduction_fails_safely_and_the_data_stays_readable()
    {
        using TempDirectory directory = new();
        string path = MakeImage(directory);
        Corrupt(path, Layout.Of(path), Damage.L1TableRefcountZero);
        using (Qcow2Image image = Qcow2Disk.Open(path, new Qcow2OpenOptions()))
        {
            Assert.Equal(IoStatus.IoError, image.WriteAt(4 << 20, Enumerable.Repeat((byte)0x62, 64 << 10).ToArray()));
            Assert.Equal(IoStatus.IoError, image.Flush());
        }
        string read = QemuTools.RunOk(QemuTools.QemuIo, "-r", "-f", "qcow2", "-c", "read -P 0x22 1M 64k", "-c", "read -P 0x11 0 128k", path);
        Assert.DoesNotContain("verification failed", read);
        // QEMU's checker finds only the damage that was made: the L1 table's refcount.
        (int _, string check) = QemuTools.Run(QemuTools.QemuImg, "check", path);
        Assert.Contains("1 errors were found", check);
    }

    [Fact]
    public void Live_data_whose_refcount_is_zero_is_never_handed_out_again()
    {
        // The fuzz finding: qemu-io writes guest data, a byte poke sets its cluster's refcount to 0,
        // and that cluster is the lowest free one, so a first write elsewhere would be put on it.
        using TempDirectory directory = new();
        string path = MakeImage(directory);
        Layout layout = Layout.Of(path);
        Corrupt(path, layout, Damage.DataClusterRefcountZero);
        long sizeBefore = new FileInfo(path).Length;
        (int _, string checkBefore) = QemuTools.Run(QemuTools.QemuImg, "check", path);
        RecordingLogger log = new();
        using (Qcow2Image image = Qcow2Disk.Open(path, new Qcow2OpenOptions { Logger = log }))
        {
            Assert.Equal(IoStatus.IoError, image.WriteAt(4 << 20, Enumerable.Repeat((byte)0x62, 64 << 10).ToArray()));
            Assert.Contains($"0x{layout.DataAt1M:x} has refcount 0 but holds guest cluster 16's data", image.LastError);
            Assert.Equal(IoStatus.IoError, image.Flush());
        }
        Assert.Single(log.Lines);
        Assert.Equal(sizeBefore, new FileInfo(path).Length);
        string read = QemuTools.RunOk(QemuTools.QemuIo, "-r", "-f", "qcow2", "-c", "read -P 0x22 1M 64k", "-c", "read -P 0x11 0 128k", "-c", "read -P 0 4M 64k", path);
        Assert.DoesNotContain("verification failed", read);
        // QEMU's checker finds only the damage that was made (the refcount, and the COPIED flag
        // that no longer matches it), exactly as before XenDisk opened the image.
        (int _, string check) = QemuTools.Run(QemuTools.QemuImg, "check", path);
        Assert.Contains("refcount=0 reference=1", check);
        Assert.Equal(checkBefore, check);
    }

    [Fact]
    public void Holes_in_a_consistent_image_are_reused()
    {
        // qemu-io's discard frees guest cluster 0's host cluster: a hole below the end of the file,
        // which the allocator may hand out once it has shown that nothing references it.
        using TempDirectory directory = new();
        string path = MakeImage(directory);
        QemuTools.RunOk(QemuTools.QemuIo, "-f", "qcow2", "-c", "discard 0 64k", path);
        long sizeBefore = new FileInfo(path).Length;
        RecordingLogger log = new();
        using (Qcow2Image image = Qcow2Disk.Open(path, new Qcow2OpenOptions { Logger = log }))
        {
            Assert.Equal(IoStatus.Ok, image.WriteAt(4 << 20, Enumerable.Repeat((byte)0x44, 64 << 10).ToArray()));
            Assert.Equal(IoStatus.Ok, image.Flush());
            // A hole XenDisk makes itself (freed by a write-back pass) is reused too.
            Assert.Equal(IoStatus.Ok, image.Discard(1 << 20, 64 << 10, false));
            Assert.Equal(IoStatus.Ok, image.Flush());
            Assert.Equal(IoStatus.Ok, image.WriteAt(8 << 20, Enumerable.Repeat((byte)0x55, 64 << 10).ToArray()));
            Assert.Equal(IoStatus.Ok, image.Close());
        }
        Assert.Empty(log.Lines);
        // Both writes went into holes: the file did not grow.
        Assert.Equal(sizeBefore, new FileInfo(path).Length);
        QemuTools.RunOk(QemuTools.QemuImg, "check", path);
        string read = QemuTools.RunOk(QemuTools.QemuIo, "-r", "-f", "qcow2", "-c", "read -P 0 0 64k", "-c", "read -P 0x11 64k 64k", "-c", "read -P 0 1M 64k",
            "-c", "read -P 0x44 4M 64k", "-c", "read -P 0x55 8M 64k", path);
        Assert.DoesNotContain("verification failed", read);
    }

    [Fact]
    public void An_image_without_damage_is_served_as_before()
    {
        using TempDirectory directory = new();
        string path = MakeImage(directory);
        RecordingLogger log = new();
        using (Qcow2Image image = Qcow2Disk.Open(path, new Qcow2OpenOptions { Logger = log }))
        {
            // New data clusters, a new L2 table (past 512 MiB is another table with 64 KiB clusters), rewrites, discard.
            Assert.Equal(IoStatus.Ok, image.WriteAt(4 << 20, Enumerable.Repeat((byte)0x44, 64 << 10).ToArray()));
            Assert.Equal(IoStatus.Ok, image.Resize(1L << 30));
            Assert.Equal(IoStatus.Ok, image.WriteAt(600L << 20, Enumerable.Repeat((byte)0x55, 64 << 10).ToArray()));
            Assert.Equal(IoStatus.Ok, image.WriteAt(0, Enumerable.Repeat((byte)0x66, 4096).ToArray()));
            Assert.Equal(IoStatus.Ok, image.Discard(1 << 20, 64 << 10, false));
            Assert.Equal(IoStatus.Ok, image.Close());
        }
        Assert.Empty(log.Lines);
        QemuTools.RunOk(QemuTools.QemuImg, "check", path);
        string read = QemuTools.RunOk(QemuTools.QemuIo, "-r", "-f", "qcow2", "-c", "read -P 0x44 4M 64k", "-c", "read -P 0x55 600M 64k", "-c", "read -P 0x66 0 4k", "-c", "read -P 0 1M 64k", path);
        Assert.DoesNotContain("verification failed", read);
    }

    private static string MakeImage(TempDirectory directory)
    {
        string path = directory.File("img.qcow2");
        QemuTools.RunOk(QemuTools.QemuImg, "create", "-q", "-f", "qcow2", path, "16M");
        List<string> arguments = ["-f", "qcow2"];
        foreach (var (offset, length, pattern) in QemuWrites)
        {
            arguments.AddRange(["-c", $"write -P 0x{pattern:x2} {offset} {length}"]);
        }
        arguments.Add(path);
        QemuTools.RunOk(QemuTools.QemuIo, [.. arguments]);
        return path;
    }

    /// <summary>Where qemu-img put the metadata of the image (read from the file, not assumed).</summary>
    private sealed record Layout(int ClusterSize, long L1Offset, long RefTableOffset, long RefBlockOffset, long L2Offset, long DataAt1M)
    {
        public static Layout Of(string path)
        {
            byte[] file = File.ReadAllBytes(path);
            int clusterSize = 1 << (int)BinaryPrimitives.ReadUInt32BigEndian(file.AsSpan(20));
            long l1 = (long)BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan(40));
            long refTable = (long)BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan(48));
            long refBlock = (long)BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan((int)refTable));
            long l2 = (long)(BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan((int)l1)) & 0x00FF_FFFF_FFFF_FE00UL);
            long dataAt1M = (long)(BinaryPrimitives.ReadUInt64BigEndian(file.AsSpan((int)l2 + (1 << 20) / clusterSize * 8)) & 0x00FF_FFFF_FFFF_FE00UL);
            return new Layout(clusterSize, l1, refTable, refBlock, l2, dataAt1M);
        }

        /// <summary>The byte offset of a cluster's 16-bit refcount (qemu-img's default refcount_order 4).</summary>
        public long RefcountEntry(long hostOffset) => RefBlockOffset + hostOffset / ClusterSize * 2;
    }

    private static void Corrupt(string path, Layout layout, Damage damage)
    {
        using FileStream file = new(path, FileMode.Open, FileAccess.ReadWrite);
        void Patch(long offset, ReadOnlySpan<byte> bytes)
        {
            file.Position = offset;
            file.Write(bytes);
        }
        Span<byte> entry = stackalloc byte[8];
        switch (damage)
        {
            case Damage.L1TableRefcountZero:
                Patch(layout.RefcountEntry(layout.L1Offset), [0, 0]);
                break;
            case Damage.L2TableRefcountZero:
                Patch(layout.RefcountEntry(layout.L2Offset), [0, 0]);
                break;
            case Damage.RefcountBlockRefcountZero:
                Patch(layout.RefcountEntry(layout.RefBlockOffset), [0, 0]);
                break;
            case Damage.DataEntryPointsAtL2Table:
            case Damage.DataEntryPointsAtRefcountBlock:
            case Damage.DataEntryPointsAtL1Table:
                long target = damage switch
                {
                    Damage.DataEntryPointsAtL2Table => layout.L2Offset,
                    Damage.DataEntryPointsAtRefcountBlock => layout.RefBlockOffset,
                    _ => layout.L1Offset,
                };
                // COPIED set: the entry claims the cluster may be rewritten in place (== Cluster mapping ==).
                BinaryPrimitives.WriteUInt64BigEndian(entry, (ulong)target | (1UL << 63));
                Patch(layout.L2Offset, entry);
                break;
            case Damage.RefcountTablePointsAtL2Table:
                BinaryPrimitives.WriteUInt64BigEndian(entry, (ulong)layout.L2Offset);
                Patch(layout.RefTableOffset, entry);
                break;
            case Damage.DataClusterRefcountZero:
                Patch(layout.RefcountEntry(layout.DataAt1M), [0, 0]);
                break;
        }
    }

    /// <summary>Header (apart from incompatible_features), L1 table, refcount table and block, and L2 table are byte for byte as before.</summary>
    private static void AssertMetadataUnchanged(byte[] before, byte[] after, Layout layout)
    {
        Assert.True(before.AsSpan(0, 72).SequenceEqual(after.AsSpan(0, 72)));
        Assert.True(before.AsSpan(80, layout.ClusterSize - 80).SequenceEqual(after.AsSpan(80, layout.ClusterSize - 80)));
        foreach (long offset in (long[])[layout.L1Offset, layout.RefTableOffset, layout.RefBlockOffset, layout.L2Offset])
        {
            Assert.True(before.AsSpan((int)offset, layout.ClusterSize).SequenceEqual(after.AsSpan((int)offset, layout.ClusterSize)), $"the cluster at 0x{offset:x} changed");
        }
    }

    /// <summary>Collects formatted log lines.</summary>
    private sealed class RecordingLogger : ILogger
    {
        public List<string> Lines { get; } = [];

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            lock (Lines)
            {
                Lines.Add(formatter(state, exception));
            }
        }
    }
}
