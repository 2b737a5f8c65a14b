using Microsoft.Win32.SafeHandles;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Storage;
using XenDisk.Cow.Tests.Qcow2.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Qcow2;

/// <summary>
/// The qcow2 remap fast path on images made by qemu-img and qemu-io: every extent it answers must
/// hold, in the files it names, exactly what the engine's own read returns; writes are granted only
/// in place; a change of mapping waits for the fast path's I/O in flight.
/// </summary>
[Trait(Needs.Key, Needs.Qemu)]
public sealed class Qcow2RemapTests : IDisposable
{
    private const long Size = 4 << 20;
    private readonly TempDirectory _directory = new("xendisk-remap-");

    public void Dispose() => _directory.Dispose();

    private (string Image, string Base) MakeImage(string extendedL2)
    {
        string basePath = Path.Combine(_directory.Path, "base.raw");
        File.WriteAllBytes(basePath, TestData.Random((int)Size - (1 << 20), 11)); // a base shorter than the disk
        string image = Path.Combine(_directory.Path, "image.qcow2");
        QemuTools.RunOk(QemuTools.QemuImg, "create", "-q", "-f", "qcow2", "-o", $"cluster_size=65536,extended_l2={extendedL2}", "-b", basePath, "-F", "raw", image, Size.ToString());
        QemuTools.RunOk(QemuTools.QemuIo, "-f", "qcow2", image,
            "-c", "write -P 0x11 0 192k", "-c", "write -P 0x22 1m 4k", "-c", "write -z 2m 64k", "-c", "write -P 0x33 3200k 100k");
        return (image, basePath);
    }

    [Theory]
    [InlineData("off")]
    [InlineData("on")]
    public void Every_remapped_range_reads_what_the_engine_reads(string extendedL2)
    {
        (string path, _) = MakeImage(extendedL2);
        using Qcow2Image image = Qcow2Disk.Open(path, new Qcow2OpenOptions { ReadOnly = true, BackingPolicy = BackingFilePolicy.InDirectories(_directory.Path) });
        byte[] expected = TestData.ReadAll(image); // also fills the L2 cache
        var random = new Random(3);
        Span<FileExtent> extents = stackalloc FileExtent[64];
        using var aligned = new AlignedBlock(256 * 512);
        int granted = 0;
        for (int i = 0; i < 400; i++)
        {
            long offset = random.NextInt64(0, Size / 512) * 512;
            long length = Math.Min(Size - offset, (1 + random.Next(256)) * 512L);
            IoBuffer[] buffers = [new IoBuffer(0x10000, (int)length)];
            int count = image.Remap(write: false, offset, length, buffers, extents, out RemapLease lease);
            if (count == 0)
            {
                continue;
            }

            granted++;
            Span<byte> actual = aligned.Span[..(int)length];
            actual.Fill(0xFF);
            long at = 0;
            foreach (FileExtent extent in extents[..count])
            {
                // The files are open with O_DIRECT, as the data plane uses them: the buffer is aligned.
                Span<byte> piece = actual.Slice((int)at, (int)extent.Length);
                if (extent.Kind == FileExtentKind.File)
                {
                    SafeFileHandle file = image.Files[extent.FileIndex];
                    Assert.Equal(extent.Length, RandomAccess.Read(file, piece, extent.FileOffset));
                }
                else
                {
                    piece.Clear();
                }

                at += extent.Length;
            }

            image.ReleaseLease(lease);
            Assert.Equal(length, at);
            Assert.True(expected.AsSpan((int)offset, (int)length).SequenceEqual(actual), $"range {offset}+{length}");
        }

        Assert.True(granted > 300, $"only {granted} of 400 ranges took the fast path");
    }

    [Fact]
    public void Writes_are_remapped_only_in_place_and_land_where_the_engine_reads()
    {
        (string path, _) = MakeImage("off");
        using Qcow2Image image = Qcow2Disk.Open(path, new Qcow2OpenOptions { BackingPolicy = BackingFilePolicy.InDirectories(_directory.Path) });
        TestData.ReadAll(image);
        Span<FileExtent> extents = stackalloc FileExtent[8];
        IoBuffer[] buffers = [new IoBuffer(0x10000, 4096)];

        // Allocated data with refcount 1: in place.
        int count = image.Remap(write: true, 64 * 1024, 4096, buffers, extents, out RemapLease lease);
        Assert.Equal(1, count);
        byte[] data = TestData.Random(4096, 5);
        using (var aligned = new AlignedBlock(4096))
        {
            data.CopyTo(aligned.Span);
            RandomAccess.Write(image.Files[extents[0].FileIndex], aligned.Span, extents[0].FileOffset);
        }

        image.ReleaseLease(lease);
        byte[] back = new byte[4096];
        Assert.Equal(IoStatus.Ok, image.ReadAt(64 * 1024, back));
        Assert.Equal(data, back);

        // Unallocated (backing), zero and past-the-base clusters need the slow path.
        Assert.Equal(0, image.Remap(write: true, 1536 * 1024, 4096, buffers, extents, out _));
        Assert.Equal(0, image.Remap(write: true, 2048 * 1024, 4096, buffers, extents, out _));
        Assert.Equal(0, image.Remap(write: true, Size - 4096, 4096, buffers, extents, out _));
        image.Flush();
        image.Dispose();
        Assert.Contains("No errors", QemuTools.RunOk(QemuTools.QemuImg, "check", path));
    }

    [Fact]
    public async Task A_discard_waits_for_the_fast_path_io_in_flight_on_its_cluster()
    {
        (string path, _) = MakeImage("off");
        using Qcow2Image image = Qcow2Disk.Open(path, new Qcow2OpenOptions { BackingPolicy = BackingFilePolicy.InDirectories(_directory.Path) });
        TestData.ReadAll(image);
        Span<FileExtent> extents = stackalloc FileExtent[8];
        IoBuffer[] buffers = [new IoBuffer(0x10000, 4096)];
        Assert.Equal(1, image.Remap(write: true, 0, 4096, buffers, extents, out RemapLease lease));

        Task<IoStatus> discard = Task.Run(() => image.Discard(0, 64 * 1024, secure: false));
        Assert.True(SpinWait.SpinUntil(() => image.Remap(write: false, 0, 4096, buffers, new FileExtent[8], out RemapLease other) == 0
            || Release(image, other), TimeSpan.FromSeconds(20)), "the discard never barred the cluster");
        Assert.False(discard.IsCompleted);

        image.ReleaseLease(lease);
        Assert.Equal(IoStatus.Ok, await discard.WaitAsync(TimeSpan.FromSeconds(20)));
    }

    private static bool Release(Qcow2Image image, RemapLease lease)
    {
        image.ReleaseLease(lease);
        return false;
    }
}
