using XenDisk.Service.Control;

namespace XenDisk.Service.Tests;

/// <summary>Device names on the control socket, against libxl's vdev numbering (libxl__device_disk_dev_number).</summary>
public sealed class DeviceSelectorTests
{
    [Theory]
    [InlineData("3/51712", 3u, 51712)]
    [InlineData("0/768", 0u, 768)]
    [InlineData("3/xvda", 3u, (202 << 8) | 0)]
    [InlineData("3/xvdb", 3u, (202 << 8) | (1 << 4))]
    [InlineData("3/xvda1", 3u, (202 << 8) | 1)]
    [InlineData("3/xvdp15", 3u, (202 << 8) | (15 << 4) | 15)]
    [InlineData("3/xvdq", 3u, (1 << 28) | (16 << 8))]
    [InlineData("3/xvdaa", 3u, (1 << 28) | (26 << 8))]
    [InlineData("3/xvda16", 3u, (1 << 28) | 16)]
    [InlineData("3/hda", 3u, 3 << 8)]
    [InlineData("3/hdb", 3u, (3 << 8) | (1 << 6))]
    [InlineData("3/hdc", 3u, 22 << 8)]
    [InlineData("3/hdd2", 3u, (22 << 8) | (1 << 6) | 2)]
    [InlineData("3/sdb", 3u, (8 << 8) | (1 << 4))]
    [InlineData("4294967295/1", uint.MaxValue, 1)]
    public void DomainAndDeviceNames_AreTheNumbersLibxlGives(string text, uint domainId, int deviceId)
    {
        Assert.True(DeviceSelector.TryParse(text, out DeviceSelector? selector, out string? error), error);
        Assert.Null(selector!.BackendPath);
        Assert.Equal(domainId, selector.DomainId);
        Assert.Equal(deviceId, selector.DeviceId);
    }

    [Theory]
    [InlineData("/local/domain/0/backend/vbd/3/51712", "/local/domain/0/backend/vbd/3/51712")]
    [InlineData("/local/domain/0/backend/vbd/3/51712/", "/local/domain/0/backend/vbd/3/51712")]
    public void Backend_paths_are_taken_as_they_are(string text, string path)
    {
        Assert.True(DeviceSelector.TryParse(text, out DeviceSelector? selector, out _));
        Assert.Equal(path, selector!.BackendPath);
        Assert.Equal(path, selector.ToString());
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("   ")]
    [InlineData("/")]
    [InlineData("//")]
    [InlineData("/local/domain/0/backend/vbd/3/51712\n")]
    [InlineData("xvda")]
    [InlineData("51712")]
    [InlineData("3/")]
    [InlineData("3/xvd")]
    [InlineData("3/xvdA")]
    [InlineData("3/xvda0")]
    [InlineData("3/xvda256")]
    [InlineData("3/xvda-1")]
    [InlineData("3/hde")]
    [InlineData("3/hda64")]
    [InlineData("3/sdq")]
    [InlineData("3/sda16")]
    [InlineData("3/vda")]
    [InlineData("-1/51712")]
    [InlineData("+3/51712")]
    [InlineData("3/+51712")]
    [InlineData("3/-51712")]
    [InlineData("3/51712x")]
    [InlineData("3/2147483648")]
    [InlineData("4294967296/51712")]
    [InlineData("3/51712/0")]
    [InlineData("a/b")]
    [InlineData("3/xvdbzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz")]
    public void Other_text_names_no_device_and_says_what_is_accepted(string? text)
    {
        Assert.False(DeviceSelector.TryParse(text, out DeviceSelector? selector, out string? error));
        Assert.Null(selector);
        Assert.False(string.IsNullOrEmpty(error));
        Assert.DoesNotContain('\n', error);
    }
}
