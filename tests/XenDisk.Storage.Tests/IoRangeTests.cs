namespace XenDisk.Storage.Tests;

public class IoRangeTests
{
    [Theory]
    [InlineData(0, 0, 4096, 512, true)]
    [InlineData(0, 4096, 4096, 512, true)]
    [InlineData(3584, 512, 4096, 512, true)]
    [InlineData(4096, 0, 4096, 512, true)]
    [InlineData(4096, 512, 4096, 512, false)]
    [InlineData(3584, 1024, 4096, 512, false)]
    [InlineData(-512, 512, 4096, 512, false)]
    [InlineData(0, -512, 4096, 512, false)]
    [InlineData(long.MaxValue - 511, 512, 4096, 512, false)]
    [InlineData(512, long.MaxValue - 511, 4096, 512, false)]
    [InlineData(100, 512, 4096, 512, false)]
    [InlineData(0, 100, 4096, 512, false)]
    [InlineData(512, 4096, 8192, 4096, false)]
    [InlineData(4096, 4096, 8192, 4096, true)]
    public void Ranges_are_checked_without_overflow(long offset, long length, long size, int sector, bool valid)
    {
        Assert.Equal(valid, IoRange.IsValid(offset, length, size, sector));
    }

    [Fact]
    public void Scatter_lists_with_negative_lengths_are_out_of_range()
    {
        IoBuffer[] buffers = [new(4096, 512), new(8192, -512)];
        Assert.Equal(IoStatus.OutOfRange, IoRange.Check(0, buffers, 1 << 20, 512, out _));
        IoBuffer[] fine = [new(4096, 512), new(8192, 1024)];
        Assert.Equal(IoStatus.Ok, IoRange.Check(0, fine, 1 << 20, 512, out long total));
        Assert.Equal(1536, total);
    }
}
