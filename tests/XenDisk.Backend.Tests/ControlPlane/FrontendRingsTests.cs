using XenDisk.Abi;
using XenDisk.Backend.ControlPlane;

namespace XenDisk.Backend.Tests.ControlPlane;

public sealed class FrontendRingsTests
{
    private const int MaxQueues = 4;
    private const int MaxOrder = 2;

    private static FrontendRings Read(params (string Key, string Value)[] keys)
    {
        var map = keys.ToDictionary(k => k.Key, k => k.Value, StringComparer.Ordinal);
        return FrontendRings.Read(key => map.GetValueOrDefault(key), MaxQueues, MaxOrder);
    }

    [Fact]
    public void Single_ring_ref_is_one_page_of_the_native_protocol()
    {
        FrontendRings rings = Read(("ring-ref", "8"), ("event-channel", "3"));

        Assert.Equal(BlkifProtocol.X86_64, rings.Protocol);
        Assert.Equal(1, rings.RingPageCount);
        Assert.False(rings.PersistentGrants);
        FrontendQueue queue = Assert.Single(rings.Queues);
        Assert.Equal(3u, queue.EventChannel);
        Assert.Equal([8u], queue.RingRefs);
    }

    [Fact]
    public void Ring_page_order_names_numbered_refs()
    {
        FrontendRings rings = Read(("ring-page-order", "2"), ("ring-ref0", "10"), ("ring-ref1", "11"), ("ring-ref2", "12"), ("ring-ref3", "13"),
            ("event-channel", "5"), ("protocol", "x86_32-abi"), ("feature-persistent", "1"));

        Assert.Equal(BlkifProtocol.X86_32, rings.Protocol);
        Assert.Equal(4, rings.RingPageCount);
        Assert.True(rings.PersistentGrants);
        Assert.Equal([10u, 11u, 12u, 13u], Assert.Single(rings.Queues).RingRefs);
    }

    [Fact]
    public void Legacy_num_ring_pages_spelling_is_accepted()
    {
        FrontendRings rings = Read(("num-ring-pages", "2"), ("ring-ref0", "20"), ("ring-ref1", "21"), ("event-channel", "7"));

        Assert.Equal(2, rings.RingPageCount);
        Assert.Equal([20u, 21u], Assert.Single(rings.Queues).RingRefs);
    }

    [Fact]
    public void Order_zero_with_a_plain_ring_ref_is_accepted()
    {
        FrontendRings rings = Read(("ring-page-order", "0"), ("ring-ref", "9"), ("event-channel", "7"));

        Assert.Equal([9u], Assert.Single(rings.Queues).RingRefs);
    }

    [Fact]
    public void Multi_queue_keys_live_in_queue_directories()
    {
        FrontendRings rings = Read(("multi-queue-num-queues", "2"), ("ring-page-order", "1"),
            ("queue-0/ring-ref0", "30"), ("queue-0/ring-ref1", "31"), ("queue-0/event-channel", "4"),
            ("queue-1/ring-ref0", "40"), ("queue-1/ring-ref1", "41"), ("queue-1/event-channel", "6"));

        Assert.Equal(2, rings.Queues.Count);
        Assert.Equal((0, 4u), (rings.Queues[0].Index, rings.Queues[0].EventChannel));
        Assert.Equal([30u, 31u], rings.Queues[0].RingRefs);
        Assert.Equal((1, 6u), (rings.Queues[1].Index, rings.Queues[1].EventChannel));
        Assert.Equal([40u, 41u], rings.Queues[1].RingRefs);
    }

    [Fact]
    public void One_queue_announced_explicitly_uses_the_frontend_directory()
    {
        FrontendRings rings = Read(("multi-queue-num-queues", "1"), ("ring-ref", "8"), ("event-channel", "3"));

        Assert.Equal([8u], Assert.Single(rings.Queues).RingRefs);
    }

    [Theory]
    [InlineData("protocol", "x86_16-abi", "protocol")]
    [InlineData("multi-queue-num-queues", "0", "0 queues")]
    [InlineData("multi-queue-num-queues", "5", "5 queues")]
    [InlineData("multi-queue-num-queues", "-1", "multi-queue-num-queues")]
    [InlineData("multi-queue-num-queues", "two", "multi-queue-num-queues")]
    [InlineData("multi-queue-num-queues", "4294967297", "multi-queue-num-queues")]
    [InlineData("ring-page-order", "3", "ring-page-order 3")]
    [InlineData("ring-page-order", "4294967295", "ring-page-order 4294967295")]
    [InlineData("ring-page-order", " 1", "ring-page-order")]
    [InlineData("num-ring-pages", "3", "not a power of two")]
    [InlineData("num-ring-pages", "0", "not a power of two")]
    [InlineData("num-ring-pages", "8", "8 ring pages")]
    [InlineData("event-channel", "", "event-channel")]
    [InlineData("event-channel", "0x10", "event-channel")]
    [InlineData("ring-ref", "-8", "ring-ref")]
    [InlineData("ring-ref", "8\n", "ring-ref")]
    public void MalformedOrExcessiveKeysAreRefused(string key, string value, string expected)
    {
        var keys = new Dictionary<string, string>(StringComparer.Ordinal) { ["ring-ref"] = "8", ["event-channel"] = "3" };
        keys[key] = value;
        DeviceSetupException error = Assert.Throws<DeviceSetupException>(() => FrontendRings.Read(k => keys.GetValueOrDefault(k), MaxQueues, MaxOrder));

        Assert.Contains(expected, error.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', error.Message);
    }

    [Theory]
    [InlineData("event-channel")]
    [InlineData("ring-ref")]
    public void Missing_keys_are_named(string missing)
    {
        var keys = new Dictionary<string, string>(StringComparer.Ordinal) { ["ring-ref"] = "8", ["event-channel"] = "3" };
        keys.Remove(missing);

        DeviceSetupException error = Assert.Throws<DeviceSetupException>(() => FrontendRings.Read(k => keys.GetValueOrDefault(k), MaxQueues, MaxOrder));

        Assert.Contains($"missing \"{missing}\"", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_missing_numbered_ref_is_named()
    {
        DeviceSetupException error = Assert.Throws<DeviceSetupException>(() =>
            Read(("ring-page-order", "1"), ("ring-ref0", "10"), ("event-channel", "3")));

        Assert.Contains("missing \"ring-ref1\"", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_missing_queue_directory_is_named()
    {
        DeviceSetupException error = Assert.Throws<DeviceSetupException>(() =>
            Read(("multi-queue-num-queues", "2"), ("queue-0/ring-ref", "30"), ("queue-0/event-channel", "4")));

        Assert.Contains("queue-1/event-channel", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Malformed_feature_persistent_means_not_offered()
    {
        Assert.False(Read(("ring-ref", "8"), ("event-channel", "3"), ("feature-persistent", "yes")).PersistentGrants);
        Assert.False(Read(("ring-ref", "8"), ("event-channel", "3"), ("feature-persistent", "0")).PersistentGrants);
    }
}
