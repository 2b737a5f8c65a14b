namespace XenDisk.Storage.Tests;

public class AlignedBufferPoolTests
{
    [Fact]
    public void Buffers_are_page_aligned_of_the_pool_size_and_reused()
    {
        using var pool = new AlignedBufferPool(bufferSize: 16384, capacity: 2);
        AlignedBuffer first = pool.Rent();
        AlignedBuffer second = pool.Rent();
        Assert.Equal(0, first.Address % 4096);
        Assert.Equal(0, second.Address % 4096);
        Assert.Equal(16384, first.Length);
        Assert.NotEqual(first.Address, second.Address);
        first.Span.Fill(0x5A);
        Assert.Equal(2, pool.RentedCount);

        pool.Return(first);
        AlignedBuffer again = pool.Rent();
        Assert.Equal(first.Address, again.Address);
        pool.Return(again);
        pool.Return(second);
        Assert.Equal(0, pool.RentedCount);
    }

    [Fact]
    public void Running_out_fails_TryRent_and_counts_the_shortage()
    {
        using var pool = new AlignedBufferPool(4096, capacity: 1);
        Assert.True(pool.TryRent(out AlignedBuffer only));
        Assert.False(pool.TryRent(out _));
        Assert.Equal(1, pool.ExhaustedCount);
        pool.Return(only);
        Assert.True(pool.TryRent(out AlignedBuffer again));
        pool.Return(again);
    }

    [Fact]
    public void Rent_waits_for_a_return_when_all_buffers_are_out()
    {
        using var pool = new AlignedBufferPool(4096, capacity: 1);
        AlignedBuffer held = pool.Rent();
        using var rented = new ManualResetEventSlim();
        var waiter = new Thread(() =>
        {
            AlignedBuffer buffer = pool.Rent();
            rented.Set();
            pool.Return(buffer);
        });
        waiter.Start();
        // The waiter cannot get a buffer while this one is held; it gets it once returned.
        Assert.False(rented.Wait(50));
        pool.Return(held);
        Assert.True(rented.Wait(TimeSpan.FromSeconds(10)));
        waiter.Join();
        Assert.Equal(1, pool.ExhaustedCount);
    }

    [Fact]
    public void TryRent_with_a_timeout_gives_up_and_dispose_wakes_waiters_with_false()
    {
        var pool = new AlignedBufferPool(4096, capacity: 1);
        AlignedBuffer held = pool.Rent();
        Assert.False(pool.TryRent(out _, millisecondsTimeout: 20));

        bool? waiterGot = null;
        var waiter = new Thread(() => waiterGot = pool.TryRent(out _, Timeout.Infinite));
        waiter.Start();
        while (waiter.ThreadState != ThreadState.WaitSleepJoin && waiter.IsAlive)
        {
            Thread.Yield();
        }
        pool.Dispose();
        Assert.True(waiter.Join(TimeSpan.FromSeconds(10)));
        Assert.False(waiterGot);
        Assert.False(pool.TryRent(out _));
        pool.Return(held);
    }

    [Fact]
    public void Returning_twice_or_a_foreign_buffer_is_refused()
    {
        using var pool = new AlignedBufferPool(4096, capacity: 1);
        AlignedBuffer buffer = pool.Rent();
        Assert.Throws<ArgumentException>(() => pool.Return(new AlignedBuffer(buffer.Address, 8192)));
        pool.Return(buffer);
        Assert.Throws<InvalidOperationException>(() => pool.Return(buffer));
    }

    [Fact]
    public void Buffers_rented_across_dispose_are_freed_on_return()
    {
        var pool = new AlignedBufferPool(4096, capacity: 2);
        AlignedBuffer buffer = pool.Rent();
        pool.Dispose();
        Assert.Throws<ObjectDisposedException>(() => pool.Rent());
        pool.Return(buffer);
        Assert.Equal(0, pool.RentedCount);
    }

    [Theory]
    [InlineData(0, 1, 4096)]
    [InlineData(1000, 1, 4096)]
    [InlineData(4096, 0, 4096)]
    [InlineData(8192, 1, 2048)]
    [InlineData(12288, 1, 12288)]
    public void Bad_geometry_is_refused(int bufferSize, int capacity, int alignment)
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new AlignedBufferPool(bufferSize, capacity, alignment));
    }
}
