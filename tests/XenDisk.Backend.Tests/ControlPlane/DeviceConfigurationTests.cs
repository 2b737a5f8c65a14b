using XenDisk.Backend.ControlPlane;

namespace XenDisk.Backend.Tests.ControlPlane;

public sealed class DeviceConfigurationTests
{
    private const uint Domain = 5;
    private const int Device = 51712;

    private static Dictionary<string, string> ValidKeys() => new(StringComparer.Ordinal)
    {
        ["params"] = "/images/disk.img",
        ["mode"] = "w",
        ["type"] = "phy",
        ["frontend"] = "/local/domain/5/device/vbd/51712",
        ["frontend-id"] = "5",
    };

    private static DeviceConfiguration Read(Dictionary<string, string> keys) =>
        DeviceConfiguration.Read(k => keys.GetValueOrDefault(k), Domain, Device, d => $"/local/domain/{d}");

    [Theory]
    [InlineData("r", true)]
    [InlineData("w", false)]
    [InlineData("w!", false)]
    public void Modes_are_understood(string mode, bool readOnly)
    {
        Dictionary<string, string> keys = ValidKeys();
        keys["mode"] = mode;

        DeviceConfiguration configuration = Read(keys);

        Assert.Equal(readOnly, configuration.ReadOnly);
        Assert.Equal("/images/disk.img", configuration.Target);
        Assert.Equal("phy", configuration.Type);
        Assert.Equal(Domain, configuration.FrontendDomainId);
        Assert.Equal("/local/domain/5/device/vbd/51712", configuration.FrontendPath);
    }

    [Theory]
    [InlineData("params", null, "missing \"params\"")]
    [InlineData("params", " ", "\"params\" is empty")]
    [InlineData("mode", null, "missing \"mode\"")]
    [InlineData("mode", "rw", "bad \"mode\"")]
    [InlineData("mode", "W", "bad \"mode\"")]
    [InlineData("frontend-id", null, "missing \"frontend-id\"")]
    [InlineData("frontend-id", "five", "bad \"frontend-id\"")]
    [InlineData("frontend-id", "-5", "bad \"frontend-id\"")]
    [InlineData("frontend-id", "32752", "bad \"frontend-id\"")]
    [InlineData("frontend-id", "6", "does not match")]
    [InlineData("frontend", null, "missing \"frontend\"")]
    [InlineData("frontend", "/local/domain/6/device/vbd/51712", "bad \"frontend\"")]
    [InlineData("frontend", "/local/domain/5/device/vbd/51713", "bad \"frontend\"")]
    [InlineData("frontend", "/local/domain/5/device/vbd/51712/..", "bad \"frontend\"")]
    [InlineData("frontend", "/local/domain/5/device/../../0/backend", "bad \"frontend\"")]
    [InlineData("frontend", "/local/domain/5/data/vbd/51712", "bad \"frontend\"")]
    [InlineData("frontend", "/local/domain/5/device//51712", "bad \"frontend\"")]
    public void BadOrMissingToolstackKeysAreRefused(string key, string? value, string expected)
    {
        Dictionary<string, string> keys = ValidKeys();
        if (value is null)
        {
            keys.Remove(key);
        }
        else
        {
            keys[key] = value;
        }

        DeviceSetupException error = Assert.Throws<DeviceSetupException>(() => Read(keys));

        Assert.Contains(expected, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Quoted_values_are_bounded_and_printable()
    {
        Dictionary<string, string> keys = ValidKeys();
        keys["mode"] = "\u0001" + new string('x', 500);

        DeviceSetupException error = Assert.Throws<DeviceSetupException>(() => Read(keys));

        Assert.True(error.Message.Length < 200, error.Message);
        Assert.DoesNotContain('\u0001', error.Message);
    }
}
