using XenDisk.Backend.ControlPlane;
using XenDisk.Backend.DataPlane;

namespace XenDisk.Backend.Tests.ControlPlane;

public sealed class BackendOptionsTests
{
    [Fact]
    public void Defaults_are_valid_and_match_blkback()
    {
        var options = new BackendOptions();

        Assert.Empty(options.GetValidationErrors());
        Assert.Equal(["vbd"], options.Kinds);
        Assert.Null(options.HotplugScriptFilter);
        Assert.Equal(4, options.MaxRingPageOrder);
        Assert.Equal(Math.Min(Environment.ProcessorCount, BackendOptions.MaxQueuesLimit), options.MaxQueues);
        Assert.Equal(256, options.MaxIndirectSegments);
        Assert.True(options.PersistentGrants);
        Assert.True(options.Discard);
    }

    public static TheoryData<BackendOptions, string> InvalidOptions => new()
    {
        { new BackendOptions { Kinds = [] }, "Kinds" },
        { new BackendOptions { Kinds = ["vbd/x"] }, "path component" },
        { new BackendOptions { Kinds = [""] }, "path component" },
        { new BackendOptions { Kinds = ["vbd", "vbd"] }, "twice" },
        { new BackendOptions { HotplugScriptFilter = "" }, "HotplugScriptFilter" },
        { new BackendOptions { HotplugScriptFilter = "/etc/xen/scripts/xendisk" }, "HotplugScriptFilter" },
        { new BackendOptions { MaxRingPageOrder = 5 }, "MaxRingPageOrder" },
        { new BackendOptions { MaxRingPageOrder = -1 }, "MaxRingPageOrder" },
        { new BackendOptions { MaxQueues = 0 }, "MaxQueues" },
        { new BackendOptions { MaxQueues = BackendOptions.MaxQueuesLimit + 1 }, "MaxQueues" },
        { new BackendOptions { MaxIndirectSegments = 4097 }, "MaxIndirectSegments" },
        { new BackendOptions { MaxIndirectSegments = -1 }, "MaxIndirectSegments" },
        { new BackendOptions { RingDrainTimeout = TimeSpan.Zero }, "RingDrainTimeout" },
        { new BackendOptions { DataPlane = new DataPlaneOptions { MaxBatch = 0 } }, "MaxBatch" },
        { new BackendOptions { DataPlane = new DataPlaneOptions { IoThreadsPerRing = 0 } }, "IoThreadsPerRing" },
    };

    [Theory]
    [MemberData(nameof(InvalidOptions))]
    public void Invalid_options_are_reported_by_name(BackendOptions options, string expected)
    {
        IReadOnlyList<string> errors = options.GetValidationErrors();

        Assert.Contains(errors, e => e.Contains(expected, StringComparison.Ordinal));
        ArgumentException thrown = Assert.Throws<ArgumentException>(options.Validate);
        Assert.Contains(expected, thrown.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Upper_bounds_are_accepted()
    {
        var options = new BackendOptions
        {
            Kinds = ["vbd", "vbd3"],
            HotplugScriptFilter = "xendisk",
            MaxRingPageOrder = 0,
            MaxQueues = BackendOptions.MaxQueuesLimit,
            MaxIndirectSegments = 8 * 512,
        };

        Assert.Empty(options.GetValidationErrors());
    }
}
