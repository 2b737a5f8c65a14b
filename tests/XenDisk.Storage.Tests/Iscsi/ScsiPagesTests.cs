using System.Buffers.Binary;
using XenDisk.Storage.Iscsi;

namespace XenDisk.Storage.Tests.Iscsi;

/// <summary>READ CAPACITY (16) data comes from the target: whatever it claims is checked before it sizes a disk.</summary>
public sealed class ScsiPagesTests
{
    [Fact]
    public void A_capacity_is_its_last_lba_plus_one_times_the_block_length()
    {
        ReadCapacity16? capacity = ReadCapacity16.Parse(Data(lastLba: 2047, blockLength: 4096));
        Assert.NotNull(capacity);
        Assert.Equal(2047ul, capacity.Value.LastLba);
        Assert.Equal(4096u, capacity.Value.BlockLength);
    }

    [Theory]
    [InlineData(ulong.MaxValue, 512u)]
    [InlineData((ulong)long.MaxValue, 512u)]
    [InlineData((ulong)long.MaxValue / 4096, 4096u)]
    public void A_capacity_beyond_what_a_long_holds_is_refused(ulong lastLba, uint blockLength)
    {
        Assert.Null(ReadCapacity16.Parse(Data(lastLba, blockLength)));
    }

    [Fact]
    public void The_largest_capacity_that_fits_is_accepted()
    {
        ulong lastLba = (ulong)long.MaxValue / 512 - 1;
        ReadCapacity16? capacity = ReadCapacity16.Parse(Data(lastLba, 512));
        Assert.NotNull(capacity);
        Assert.True((capacity.Value.LastLba + 1) * 512 <= long.MaxValue);
    }

    private static byte[] Data(ulong lastLba, uint blockLength)
    {
        byte[] data = new byte[32];
        BinaryPrimitives.WriteUInt64BigEndian(data, lastLba);
        BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(8), blockLength);
        return data;
    }
}
