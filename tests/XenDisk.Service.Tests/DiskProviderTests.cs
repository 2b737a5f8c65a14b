using XenDisk.Service.Storage;
using XenDisk.Storage;

namespace XenDisk.Service.Tests;

public sealed class DiskProviderTests : IDisposable
{
    private readonly TempDirectory _work = new("xendisk-disks-");

    public DiskProviderTests()
    {
        Images = Directory.CreateDirectory(Path.Combine(_work.Path, "images")).FullName;
        Outside = Directory.CreateDirectory(Path.Combine(_work.Path, "outside")).FullName;
    }

    private string Images { get; }

    private string Outside { get; }

    public void Dispose() => _work.Dispose();

    private static string CreateImage(string directory, string name, int sizeBytes = 1 << 20)
    {
        string path = Path.Combine(directory, name);
        using FileStream file = File.Create(path);
        file.SetLength(sizeBytes);
        return path;
    }

    private ImageDiskProvider Provider(bool allowBlockDevices = true) =>
        new(new ImageDirectoryPolicy([Images], allowBlockDevices));

    [Fact]
    public void Plain_and_raw_prefixed_paths_open_the_same_image()
    {
        string image = CreateImage(Images, "disk.img");
        using (IBlockDevice plain = Provider().Open(new DiskSpecification(image, ReadOnly: true)))
        {
            Assert.Equal(1 << 20, plain.Info.SizeBytes);
        }

        using IBlockDevice prefixed = Provider().Open(new DiskSpecification("raw:" + image, ReadOnly: true));
        Assert.Equal(1 << 20, prefixed.Info.SizeBytes);
    }

    [Theory]
    [InlineData("NBD:host:10809")]
    [InlineData("iscsi:iqn.2001-04.com.example:disk")]
    public void Unknown_schemes_are_refused(string target)
    {
        Assert.Throws<StorageException>(() => Provider().Open(new DiskSpecification(target, ReadOnly: true)));
    }

    [Fact]
    public void A_cow_target_opens_an_overlay_over_a_base_in_the_allowed_directories()
    {
        string baseImage = CreateImage(Images, "golden.img");
        string overlay = Path.Combine(Images, "guest.qcow2");
        using (IBlockDevice device = Provider().Open(new DiskSpecification($"cow:{baseImage},{overlay}", ReadOnly: false)))
        {
            Assert.Equal(1 << 20, device.Info.SizeBytes);
            Assert.Equal(IoStatus.Ok, device.WriteAt(0, new byte[4096]));
        }

        Assert.True(File.Exists(overlay));
    }

    [Fact]
    public void A_cow_base_outside_the_allowed_directories_is_refused()
    {
        string baseImage = CreateImage(Outside, "golden.img");
        StorageException e = Assert.Throws<StorageException>(() =>
            Provider().Open(new DiskSpecification($"cow:{baseImage},{Path.Combine(Images, "guest.qcow2")}", ReadOnly: false)));
        Assert.Contains("Storage:AllowedImageDirectories", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Images_outside_the_allowed_directories_are_refused()
    {
        string image = CreateImage(Outside, "secret.img");
        StorageException e = Assert.Throws<StorageException>(() => Provider().Open(new DiskSpecification(image, ReadOnly: true)));
        Assert.Contains("Storage:AllowedImageDirectories", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Dot_dot_and_symbolic_links_cannot_escape_the_allowed_directories()
    {
        string secret = CreateImage(Outside, "secret.img");
        Assert.Throws<StorageException>(() => Provider().Open(new DiskSpecification(Path.Combine(Images, "..", "outside", "secret.img"), ReadOnly: true)));

        string link = Path.Combine(Images, "innocent.img");
        File.CreateSymbolicLink(link, secret);
        StorageException e = Assert.Throws<StorageException>(() => Provider().Open(new DiskSpecification(link, ReadOnly: true)));
        Assert.Contains(secret, e.Message, StringComparison.Ordinal);

        string linkedDirectory = Path.Combine(Images, "sub");
        Directory.CreateSymbolicLink(linkedDirectory, Outside);
        Assert.Throws<StorageException>(() => Provider().Open(new DiskSpecification(Path.Combine(linkedDirectory, "secret.img"), ReadOnly: true)));
    }

    [Fact]
    public void A_link_that_stays_inside_is_followed()
    {
        string real = CreateImage(Images, "real.img");
        string link = Path.Combine(Images, "alias.img");
        File.CreateSymbolicLink(link, "real.img");
        using IBlockDevice device = Provider().Open(new DiskSpecification(link, ReadOnly: true));
        Assert.Equal(1 << 20, device.Info.SizeBytes);
        Assert.Equal(real, ImageDirectoryPolicy.Canonicalize(link));
    }

    [Fact]
    public void A_symbolic_link_loop_is_refused_not_followed_forever()
    {
        string first = Path.Combine(Images, "loop-a");
        string second = Path.Combine(Images, "loop-b");
        File.CreateSymbolicLink(first, second);
        File.CreateSymbolicLink(second, first);
        StorageException e = Assert.Throws<StorageException>(() => Provider().Open(new DiskSpecification(first, ReadOnly: true)));
        Assert.Contains("symbolic links", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Device_nodes_follow_AllowBlockDevices()
    {
        StorageException e = Assert.Throws<StorageException>(() => Provider(allowBlockDevices: false).Open(new DiskSpecification("/dev/loop0", ReadOnly: true)));
        Assert.Contains("Storage:AllowBlockDevices", e.Message, StringComparison.Ordinal);

        // Allowed by the policy, so what remains is the raw provider's own judgement of the node.
        StorageException character = Assert.Throws<StorageException>(() => Provider().Open(new DiskSpecification("/dev/null", ReadOnly: true)));
        Assert.DoesNotContain("AllowedImageDirectories", character.Message, StringComparison.Ordinal);
    }
}
