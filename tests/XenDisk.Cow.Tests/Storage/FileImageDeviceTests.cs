using XenDisk.Cow.Storage;
using XenDisk.Cow.Tests.Bitmap.Support;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Storage;

/// <summary>
/// The image tools open images through <see cref="FileImageDevice"/>; an overlay may live on a block
/// device (an LVM volume, here a loop device), whose size fstat reports as 0.
/// </summary>
[Trait(Needs.Key, Needs.Root)]
[Trait(Needs.Key, Needs.Loop)]
public sealed class FileImageDeviceTests
{
    [Fact]
    public void A_block_device_has_the_size_of_what_it_holds_and_reads_back_its_bytes()
    {
        using TempDirectory directory = new("xendisk-fileimage-tests-", "/var/tmp");
        string file = directory.File("volume.img");
        byte[] contents = new byte[3 << 20];
        new Random(7).NextBytes(contents);
        File.WriteAllBytes(file, contents);
        string loop;
        lock (BitmapDisks.LosetupGate)
        {
            loop = ProcessRunner.Output("losetup", "-f", "--show", file);
        }
        try
        {
            using FileImageDevice device = FileImageDevice.Open(loop, readOnly: true);
            Assert.Equal(contents.Length, device.Info.SizeBytes);
            Assert.Equal(contents.Length, device.Refresh().SizeBytes);
            byte[] tail = new byte[4096];
            Assert.Equal(IoStatus.Ok, device.ReadAt(contents.Length - tail.Length, tail));
            Assert.Equal(contents.AsSpan(contents.Length - tail.Length).ToArray(), tail);
        }
        finally
        {
            lock (BitmapDisks.LosetupGate)
            {
                ProcessRunner.Output("losetup", "-d", loop);
            }
        }
    }
}
