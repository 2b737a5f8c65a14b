using XenDisk.Abi;
using XenDisk.Backend.Tests.Harness;
using XenDisk.TestFrontend;
using XenDisk.Xen.Simulated;

namespace XenDisk.Backend.Tests.EndToEnd;

/// <summary>Connecting blkfront-like frontends to the test bed's backend, and verified I/O through them.</summary>
internal static class FrontendHarness
{
    public static FrontendOptions Options(FrontendOptions? options = null) =>
        (options ?? new FrontendOptions()) with { StateTimeout = BackendTestBed.Timeout };

    public static async Task<BlockFrontend> ConnectAsync(BackendTestBed bed, DiskAttachment attachment, FrontendOptions? options = null)
    {
        var frontend = new BlockFrontend(bed.Hypervisor, attachment.Guest, attachment, Options(options));
        try
        {
            await frontend.ConnectAsync().WaitAsync(BackendTestBed.Timeout);
            return frontend;
        }
        catch
        {
            await frontend.DisposeAsync().AsTask().WaitAsync(BackendTestBed.Timeout);
            throw;
        }
    }

    /// <summary>Deterministic, position-dependent bytes: a misplaced block never matches.</summary>
    public static byte[] Pattern(int seed, int length)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    /// <summary>Writes a pattern, reads it back through the ring and checks the disk itself holds it too.</summary>
    public static async Task WriteReadVerifyAsync(BlockFrontend frontend, long sector, int length, int seed, MemoryBlockDeviceView? disk = null, int queue = -1)
    {
        byte[] data = Pattern(seed, length);
        Assert.Equal(BlkifStatus.Okay, await frontend.WriteAsync(sector, data, queue).WaitAsync(BackendTestBed.Timeout));

        byte[] back = new byte[length];
        Assert.Equal(BlkifStatus.Okay, await frontend.ReadAsync(sector, back, queue).WaitAsync(BackendTestBed.Timeout));
        Assert.True(data.AsSpan().SequenceEqual(back), $"read-back of {length} bytes at sector {sector} differs");
        if (disk is not null)
        {
            Assert.True(disk.Slice(sector * BlkifLimits.SectorSize, length).SequenceEqual(data), $"the disk does not hold what was written at sector {sector}");
        }
    }

    /// <summary>Disconnects and asserts that the backend released every grant it had mapped (all of
    /// them, unless <paramref name="otherDevicesConnected"/>: then only this frontend's).</summary>
    public static async Task DisconnectCleanlyAsync(BackendTestBed bed, BlockFrontend frontend, bool otherDevicesConnected = false)
    {
        FrontendDisconnectResult result = await frontend.DisconnectAsync().WaitAsync(BackendTestBed.Timeout);
        Assert.True(result.BackendReachedClosed, "the backend did not reach Closed");
        Assert.Equal(0, result.RingGrantsStillMapped);
        Assert.Equal(0, result.DataGrantsStillMapped);
        Assert.Equal(0, frontend.ProtocolViolations);
        Assert.Equal(0, frontend.GrantEndFailures);
        if (!otherDevicesConnected)
        {
            Assert.Equal(0, bed.Hypervisor.ActiveGrantMappings);
        }
    }
}

/// <summary>A copy of part of a memory disk, taken when asked (the disk's Span cannot cross an await).</summary>
internal sealed class MemoryBlockDeviceView(XenDisk.Storage.MemoryBlockDevice disk)
{
    public ReadOnlySpan<byte> Slice(long offset, int length) => disk.Contents.Slice(checked((int)offset), length).ToArray();
}
