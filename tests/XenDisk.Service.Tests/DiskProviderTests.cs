using XenDisk.Service.Storage;
using XenDisk.Storage;

namespace XenDisk.Service.Tests;

public sealed class DiskProviderTests : IDisposable
{
    private readonly DirectoryInfo _work = Directory.CreateTempSubdirectory("xendisk-disks-");

    public DiskProviderTests()
    {
        Images = Directory.CreateDirectory(Path.Combine(_work.FullName, "images")).FullName;
        Outside = Directory.CreateDirectory(Path.Combine(_work.FullName, "outside")).FullName;
    }

    private string Images { get; }

    private string Outside { get; }

    public void Dispose() => _work.Delete(recursive: true);

    private static string CreateImage(string directory, string name, int sizeBytes = 1 << 20)
    {
        string path = Path.Combine(directory, name);
        using FileStream file = File.Create(path);
        file.SetLength(sizeBytes);
        return path;
    }

    private SchemeDiskProvider Provider(bool allowBlockDevices = true) =>
        new(new RawDiskProvider(), new ImageDirectoryPolicy([Images], allowBlockDevices));

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
    [InlineData("qcow2:/var/lib/xendisk/images/a.qcow2", "qcow2:")]
    [InlineData("cow:/var/lib/xendisk/images/a.cow", "cow:")]
    [InlineData("NBD:host:10809", "nbd:")]
    public void Unknown_schemes_are_refused_naming_the_scheme(string target, string scheme)
    {
        StorageException e = Assert.Throws<StorageException>(() => Provider().Open(new DiskSpecification(target, ReadOnly: false)));
        Assert.Contains(scheme, e.Message, StringComparison.Ordinal);
        Assert.Contains("raw:", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("/images/disk:1.img", null, "/images/disk:1.img")]
    [InlineData("raw:/a", "raw", "/a")]
    [InlineData("RAW:/a", "raw", "/a")]
    [InlineData("c:/x", "c", "/x")]
    [InlineData("9p:/x", null, "9p:/x")]
    [InlineData("no scheme", null, "no scheme")]
    [InlineData("a b:/x", null, "a b:/x")]
    public void Schemes_are_recognised_only_where_RFC_3986_allows(string target, string? scheme, string path)
    {
        Assert.Equal((scheme, path), SchemeDiskProvider.SplitScheme(target));
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
