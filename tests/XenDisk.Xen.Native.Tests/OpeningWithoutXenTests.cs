using Tmds.Linux;

namespace XenDisk.Xen.Native.Tests;

/// <summary>
/// Opening real Xen handles on a machine without Xen must fail with an exception that names the
/// call, not crash. Where the device exists (a real dom0 running these tests) the open must work.
/// </summary>
[Collection(NativeEnvironmentCollection.Name)]
public sealed class OpeningWithoutXenTests
{
    [Fact]
    public void Grant_table_open_names_xengnttab_open()
    {
        if (File.Exists("/dev/xen/gntdev"))
        {
            using NativeGrantTable table = NativeGrantTable.Open();
            return;
        }

        XenException error = Assert.Throws<XenException>(() => NativeGrantTable.Open());
        Assert.Equal("xengnttab_open", error.Operation);
        Assert.Equal(LibC.ENOENT, error.Errno);
        Assert.StartsWith("xengnttab_open failed: errno 2 (ENOENT)", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Event_channel_open_names_xenevtchn_open()
    {
        if (File.Exists("/dev/xen/evtchn"))
        {
            using NativeEventChannels channels = NativeEventChannels.Open();
            return;
        }

        XenException error = Assert.Throws<XenException>(() => NativeEventChannels.Open());
        Assert.Equal("xenevtchn_open", error.Operation);
        Assert.Equal(LibC.ENOENT, error.Errno);
    }

    [Fact]
    public void Platform_open_names_xs_open()
    {
        if (XenEnvironment.Probe().Problems.All(p => !p.StartsWith("xenstore", StringComparison.Ordinal)))
        {
            Assert.True(NativeXenPlatform.Open().LocalDomainId < 0x7FF0);
            return;
        }

        XenException error = Assert.Throws<XenException>(() => NativeXenPlatform.Open());
        Assert.Equal("xs_open", error.Operation);
        Assert.True(error.Errno > 0);
        Assert.Contains("xs_open failed", error.Message, StringComparison.Ordinal);
    }
}
