using XenDisk.Cow.Overlays;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Provider;
using XenDisk.Storage;

namespace XenDisk.Cow.Tests.Provider;

/// <summary>The target syntax: what is accepted, and an operator-readable refusal for everything else.</summary>
public class CowTargetTests
{
    [Theory]
    [InlineData("", "empty")]
    [InlineData("   ", "empty")]
    [InlineData("vmdk:/images/a.vmdk", "Unknown disk kind \"vmdk\"")]
    [InlineData("RAW:/images/a.raw", "Unknown disk kind")]
    [InlineData("images/disk.raw", "relative")]
    [InlineData(":/images/disk.raw", "relative")]
    [InlineData("raw:disk.raw", "relative")]
    [InlineData("raw:", "empty")]
    [InlineData("raw:/images/a,b.raw", "comma")]
    [InlineData("raw:/images/a.raw,policy=sync", "no options")]
    [InlineData("qcow2:relative.qcow2", "relative")]
    [InlineData("qcow2:/images/a.qcow2,format=bitmap", "unknown option \"format\"")]
    [InlineData("qcow2:/images/a.qcow2,policy=fast", "not a metadata policy")]
    [InlineData("cow:/images/base.raw", "needs a base and an overlay")]
    [InlineData("cow:/images/base.raw,format=qcow2", "needs a base and an overlay")]
    [InlineData("cow:/images/base.raw,overlay.qcow2", "the overlay path \"overlay.qcow2\" is relative")]
    [InlineData("cow:base.raw,/o/overlay.qcow2", "the base path \"base.raw\" is relative")]
    [InlineData("cow:/images/base.raw,/o/a,b.qcow2", "not an option")]
    [InlineData("cow:/images/base.raw,/o/o.qcow2,/x", "comma")]
    [InlineData("cow:/images/base.raw,/o/o.qcow2,colour=blue", "unknown option \"colour\"")]
    [InlineData("cow:/images/base.raw,/o/o.qcow2,policy", "key=value")]
    [InlineData("cow:/images/base.raw,/o/o.qcow2,policy=", "key=value")]
    [InlineData("cow:/images/base.raw,/o/o.qcow2,", "key=value")]
    [InlineData("cow:/images/base.raw,/o/o.qcow2,policy=unsafe", "policy=unsafe is not a metadata policy")]
    [InlineData("cow:/images/base.raw,/o/o.qcow2,policy=sync,policy=flush", "given twice")]
    [InlineData("cow:/images/base.raw,/o/o.qcow2,format=vmdk", "not an overlay format")]
    [InlineData("cow:/images/base.raw,/o/o.qcow2,cluster=3000", "power of two")]
    [InlineData("cow:/images/base.raw,/o/o.qcow2,cluster=4m", "power of two")]
    [InlineData("cow:/images/base.raw,/o/o.qcow2,cluster=256", "power of two")]
    [InlineData("cow:/images/base.raw,/o/o.qcow2,cluster=-4k", "power of two")]
    [InlineData("cow:/images/base.raw,/o/o.qcow2,cluster=99999999999999999999k", "power of two")]
    [InlineData("cow:/images/base.raw,/o/o.qcow2,grain=128k", "power of two")]
    [InlineData("cow:/images/base.raw,/o/o.qcow2,base-format=vmdk", "base-format=vmdk")]
    [InlineData("cow:/images/base.raw\n,/o/o.qcow2", "control characters")]
    [InlineData("raw:/images/a\0.raw", "control characters")]
    public void MalformedTargetsAreRefusedWithAReason(string target, string fragment)
    {
        StorageException e = Assert.Throws<StorageException>(() => CowTarget.Parse(target));
        Assert.Contains(fragment, e.Message);
        // The provider refuses the same way, before touching any file.
        StorageException fromProvider = Assert.Throws<StorageException>(() => new CowDiskProvider().Open(new DiskSpecification(target, ReadOnly: false)));
        Assert.Equal(e.Message, fromProvider.Message);
    }

    [Fact]
    public void Well_formed_targets_parse()
    {
        CowTarget bare = CowTarget.Parse("/dev/vg0/guest");
        Assert.Equal((CowTargetKind.Raw, "/dev/vg0/guest"), (bare.Kind, bare.Path));

        CowTarget raw = CowTarget.Parse("raw:/images/../images/a.raw");
        Assert.Equal((CowTargetKind.Raw, "/images/a.raw"), (raw.Kind, raw.Path));

        CowTarget qcow2 = CowTarget.Parse("qcow2:/images/a.qcow2,policy=lazy");
        Assert.Equal((CowTargetKind.Qcow2, "/images/a.qcow2", MetadataPolicy.Lazy), (qcow2.Kind, qcow2.Path, qcow2.Policy));

        CowTarget cow = CowTarget.Parse("cow:/images/base.img,/overlays/g1.cow,format=bitmap,policy=transient,grain=64k,base-format=qcow2");
        Assert.Equal(CowTargetKind.Cow, cow.Kind);
        Assert.Equal("/images/base.img", cow.BasePath);
        Assert.Equal("/overlays/g1.cow", cow.OverlayPath);
        Assert.Equal(OverlayFormat.Bitmap, cow.OverlayFormat);
        Assert.Equal(MetadataPolicy.Transient, cow.Policy);
        Assert.Equal(65536, cow.GrainSize);
        Assert.Equal("qcow2", cow.BaseFormat);

        CowTarget defaults = CowTarget.Parse("cow:/b,/o,cluster=2M");
        Assert.Null(defaults.OverlayFormat);
        Assert.Null(defaults.Policy);
        Assert.Equal(2 << 20, defaults.ClusterSize);
        Assert.Equal("raw", defaults.BaseFormat);
        Assert.Equal(512, CowTarget.Parse("cow:/b,/o,cluster=512").ClusterSize);
    }

    [Theory]
    [InlineData("relative/dir")]
    [InlineData("")]
    public void Invalid_options_are_refused_at_construction(string directory)
    {
        Assert.Throws<ArgumentException>(() => new CowDiskProvider(new CowProviderOptions { AllowedBaseDirectories = [directory] }));
    }

    [Fact]
    public void Invalid_defaults_are_refused_at_construction()
    {
        Assert.Throws<ArgumentException>(() => new CowDiskProvider(new CowProviderOptions { DefaultClusterSize = 1000 }));
        Assert.Throws<ArgumentException>(() => new CowDiskProvider(new CowProviderOptions { DefaultGrainSize = 256 }));
        Assert.Throws<ArgumentException>(() => new CowDiskProvider(new CowProviderOptions { DefaultPolicy = (MetadataPolicy)42 }));
    }
}
