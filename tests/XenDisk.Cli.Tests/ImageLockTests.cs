using XenDisk.Cli.Tests.Support;
using XenDisk.Cow.Qcow2;
using XenDisk.Storage;

namespace XenDisk.Cli.Tests;

/// <summary>
/// QEMU's image locks (block/file-posix.c: OFD read locks on bytes 100 + permission and 200 + unshared
/// permission) between XenDisk and real qemu-io processes: a writer on either side keeps the other out,
/// readers share.
/// </summary>
[Trait(Needs.Key, Needs.Qemu)]
public sealed class ImageLockTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private string Image()
    {
        string path = _dir.File("disk.qcow2");
        ProcessResult created = QemuTools.Run("qemu-img", "create", "-f", "qcow2", path, "4M");
        Assert.True(created.ExitCode == 0, created.ToString());
        return path;
    }

    [Fact]
    public void XenDisk_writing_qemu_io_write_is_refused_with_the_lock_message()
    {
        string path = Image();
        using (Qcow2Image image = Qcow2Disk.Open(path))
        {
            ProcessResult write = QemuTools.Run("qemu-io", "-f", "qcow2", "-c", "write 0 4k", path);

            Assert.NotEqual(0, write.ExitCode);
            Assert.Contains("Failed to get \"write\" lock", write.Error + write.Output);
            // Reading needs the image not to change underneath, which a writer does not share either.
            Assert.NotEqual(0, QemuTools.Run("qemu-img", "info", path).ExitCode);
        }

        // Closing the image releases the locks with its descriptor.
        ProcessResult after = QemuTools.Run("qemu-io", "-f", "qcow2", "-c", "write 0 4k", path);
        Assert.True(after.ExitCode == 0, after.ToString());
        Assert.Equal(0, QemuTools.Run("qemu-img", "check", path).ExitCode);
    }

    [Fact]
    public async Task Served_disk_keeps_qemu_io_out_the_shared_base_stays_readable()
    {
        string baseImage = _dir.File("base.raw");
        ProcessResult created = QemuTools.Run("qemu-img", "create", "-f", "raw", baseImage, "4M");
        Assert.True(created.ExitCode == 0, created.ToString());
        string overlay = _dir.File("guest.qcow2");
        await using (SimulatedService service = await SimulatedService.StartAsync(_dir.Path, _dir.Path))
        {
            await service.AttachAsync($"cow:{baseImage},{overlay},format=qcow2", connect: false);

            ProcessResult write = QemuTools.Run("qemu-io", "-f", "qcow2", "-c", "write 0 4k", overlay);
            Assert.NotEqual(0, write.ExitCode);
            Assert.Contains("Failed to get \"write\" lock", write.Error + write.Output);
            // The base is opened read-only and shared: readers may use it, writers may not.
            Assert.Equal(0, QemuTools.Run("qemu-img", "info", "-f", "raw", baseImage).ExitCode);
            Assert.NotEqual(0, QemuTools.Run("qemu-io", "-f", "raw", "-c", "write 0 4k", baseImage).ExitCode);
        }

        ProcessResult after = QemuTools.Run("qemu-io", "-f", "qcow2", "-c", "write 0 4k", overlay);
        Assert.True(after.ExitCode == 0, after.ToString());
    }

    [Fact]
    public void Qemu_io_holding_the_image_XenDisk_refuses_and_names_the_process()
    {
        string path = Image();
        using QemuTools.InteractiveTool qemu = QemuTools.HoldWithQemuIo(path, readOnly: false);

        StorageException writer = Assert.Throws<StorageException>(() => Qcow2Disk.Open(path).Dispose());
        Assert.Contains("Failed to get", writer.Message);
        Assert.Contains($"process {qemu.ProcessId} (qemu-io)", writer.Message);

        CliResult info = Xendisk.Run("image", "info", path);
        Assert.Equal(1, info.ExitCode);
        Assert.Contains("Failed to get shared \"write\" lock", info.Error);
        Assert.Contains($"process {qemu.ProcessId} (qemu-io)", info.Error);
        Xendisk.AssertNoStackTrace(info);

        CliResult io = Xendisk.Run("io", path, "-c", "write 0 4k");
        Assert.NotEqual(0, io.ExitCode);
        Assert.Contains("lock", io.Error);
    }

    [Fact]
    public void Convert_onto_an_image_qemu_holds_is_refused_and_leaves_it_alone()
    {
        string held = Image();
        string source = _dir.File("source.raw");
        ProcessResult created = QemuTools.Run("qemu-img", "create", "-f", "raw", source, "1M");
        Assert.True(created.ExitCode == 0, created.ToString());
        byte[] before = File.ReadAllBytes(held);

        using (QemuTools.HoldWithQemuIo(held, readOnly: false))
        {
            CliResult converted = Xendisk.Run("image", "convert", "-O", "qcow2", source, held);
            Assert.Equal(1, converted.ExitCode);
            Assert.Contains("lock", converted.Error);
            Assert.Contains("(qemu-io)", converted.Error);
        }
        Assert.Equal(before, File.ReadAllBytes(held));
    }

    [Fact]
    public void Readers_share_both_ways()
    {
        string path = Image();
        using (QemuTools.HoldWithQemuIo(path, readOnly: true))
        {
            CliResult info = Xendisk.Run("image", "info", path);
            Assert.True(info.ExitCode == 0, info.ToString());
            using Qcow2Image reader = Qcow2Disk.Open(path, new Qcow2OpenOptions { ReadOnly = true });
            // A reader does not share writes: XenDisk opening it writable is refused.
            Assert.Throws<StorageException>(() => Qcow2Disk.Open(path).Dispose());
        }

        using (Qcow2Disk.Open(path, new Qcow2OpenOptions { ReadOnly = true }))
        {
            ProcessResult read = QemuTools.Run("qemu-io", "-r", "-f", "qcow2", "-c", "read 0 4k", path);
            Assert.True(read.ExitCode == 0, read.ToString());
            Assert.Equal(0, QemuTools.Run("qemu-img", "info", path).ExitCode);
        }
    }

    [Fact]
    public void Unlock_on_an_image_file_names_the_qemu_process_holding_it_and_refuses_to_break_file_locks()
    {
        string path = Image();
        Assert.Equal($"{path}: not locked", Xendisk.Run("image", "unlock", path).Output.Trim());

        using (QemuTools.InteractiveTool qemu = QemuTools.HoldWithQemuIo(path, readOnly: false))
        {
            CliResult shown = Xendisk.Run("image", "unlock", path);
            Assert.True(shown.ExitCode == 0, shown.ToString());
            Assert.Contains($"process {qemu.ProcessId} (qemu-io)", shown.Output);

            CliResult forced = Xendisk.Run("image", "unlock", "--force", path);
            Assert.Equal(1, forced.ExitCode);
            Assert.Contains($"process {qemu.ProcessId} (qemu-io)", forced.Error);
            Assert.Contains("cannot be broken", forced.Error);
            Xendisk.AssertNoStackTrace(forced);
        }

        CliResult after = Xendisk.Run("image", "unlock", "--force", path);
        Assert.True(after.ExitCode == 0, after.ToString());
        Assert.Contains("not locked", after.Output);
        Assert.Equal(1, Xendisk.Run("image", "unlock", _dir.File("missing.qcow2")).ExitCode);
    }
}
