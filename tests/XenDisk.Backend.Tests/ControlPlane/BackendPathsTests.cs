using XenDisk.Backend.ControlPlane;

namespace XenDisk.Backend.Tests.ControlPlane;

public sealed class BackendPathsTests
{
    private const string Root = "/local/domain/0/backend/vbd";

    [Theory]
    [InlineData(Root, 0, 0u, 0)]
    [InlineData(Root + "/5", 1, 5u, 0)]
    [InlineData(Root + "/5/51712", 2, 5u, 51712)]
    [InlineData(Root + "/5/51712/state", 2, 5u, 51712)]
    [InlineData(Root + "/5/51712/queue-0/x", 2, 5u, 51712)]
    [InlineData(Root + "3/5/51712", -1, 0u, 0)]
    [InlineData(Root + "/x/51712", -1, 0u, 0)]
    [InlineData(Root + "/5/-1", -1, 5u, 0)]
    [InlineData(Root + "/32752/1", -1, 0u, 0)]
    [InlineData(Root + "/5/4294967295", -1, 5u, 0)]
    [InlineData("/local/domain/0/backend", -1, 0u, 0)]
    public void WatchedPathsAreSplitIntoDomainAndDevice(string path, int depth, uint domain, int device)
    {
        int parsed = BackendPaths.ParseBelowRoot(Root, path, out uint domainId, out int deviceId);

        Assert.Equal(depth, parsed);
        if (depth >= 1)
        {
            Assert.Equal(domain, domainId);
        }

        if (depth == 2)
        {
            Assert.Equal(device, deviceId);
        }
    }
}
