using System.Globalization;
using System.Text.RegularExpressions;
using XenDisk.Backend.DataPlane;
using XenDisk.Service.Control;
using XenDisk.Service.Tests.Support;

namespace XenDisk.Service.Tests;

/// <summary>
/// What `xendisk status` says about indirect requests: blkif has no frontend key for them, so the
/// backend shows its offer, and "in use" only once a request too large for a direct one arrived.
/// </summary>
public sealed class StatusFeaturesTests : IDisposable
{
    private readonly TempDirectory _work = new("xendisk-status-");

    public void Dispose() => _work.Dispose();

    [Fact]
    public async Task Indirect_requests_are_reported_as_offered_until_the_guest_sends_one()
    {
        string images = Directory.CreateDirectory(Path.Combine(_work.Path, "images")).FullName;
        string image = Path.Combine(images, "disk.img");
        using (FileStream file = File.Create(image))
        {
            file.SetLength(16 << 20);
        }

        await using SimulatedService service = await SimulatedService.StartAsync(_work.Path, images);
        AttachedDisk disk = await service.AttachAsync(image);

        // 4 KiB requests need no indirect segments, whatever the frontend could do.
        Assert.Equal(0, await disk.Frontend!.WriteAsync(0, new byte[4096]).WaitAsync(SimulatedService.Timeout));
        FeaturesReport before = Features(await service.StatusAsync(), disk);
        Assert.Equal(256, before.MaxIndirectSegments);
        Assert.Equal(4096, before.LargestRequestBytes);
        Assert.False(before.IndirectInUse);
        Assert.Equal("indirect not used so far (256 segments offered)", StatusTextFormatter.Indirect(before));

        // 64 KiB is 16 segments, more than the 11 of a direct request: the frontend sent it indirect.
        Assert.Equal(0, await disk.Frontend.WriteAsync(0, new byte[64 * 1024]).WaitAsync(SimulatedService.Timeout));
        ServiceStatusReport status = await service.StatusAsync();
        FeaturesReport after = Features(status, disk);
        Assert.True(after.IndirectInUse);
        Assert.Equal(64 * 1024, after.LargestRequestBytes);
        Assert.Contains("indirect in use (up to 256 segments offered, largest request 64.0 KiB)", StatusTextFormatter.Format(status), StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_stop_line_counts_every_device_the_backend_released()
    {
        string images = Directory.CreateDirectory(Path.Combine(_work.Path, "images")).FullName;
        var service = await SimulatedService.StartAsync(_work.Path, images);
        try
        {
            // Two disks the toolstack attached and no guest connected to: both still served at stop
            // (the demo guest detaches before the backend stops).
            foreach (string name in new[] { "a.img", "b.img" })
            {
                using (FileStream file = File.Create(Path.Combine(images, name)))
                {
                    file.SetLength(16 << 20);
                }

                await service.AttachAsync(Path.Combine(images, name), connect: false);
            }
        }
        finally
        {
            await service.DisposeAsync();
        }

        // Both attached disks, and the demo guest's device when the backend had not finished removing
        // it yet (the guest detaches just before the backend stops).
        string stopped = Assert.Single(service.HydrationLog.Lines, line => line.EventId == 4003).Message;
        int released = int.Parse(Regex.Match(stopped, @"; (\d+) device\(s\) released").Groups[1].Value, CultureInfo.InvariantCulture);
        Assert.InRange(released, 2, 3);
    }

    [Theory]
    [InlineData(0, 0, "no indirect (not offered)")]
    [InlineData(256, 45056, "indirect not used so far (256 segments offered)")]
    [InlineData(256, 45057, "indirect in use (up to 256 segments offered, largest request 44.0 KiB)")]
    public void The_indirect_line_follows_the_offer_and_the_largest_request(int offered, long largest, string expected)
    {
        Assert.Equal(expected, StatusTextFormatter.Indirect(new FeaturesReport(true, offered, false, false, false, largest)));
    }

    [Theory]
    [InlineData("Auto", BlkifRing.IoUringEngineName)]
    [InlineData("Threads", BlkifRing.ThreadsEngineName)]
    public async Task Each_queue_reports_its_engine_and_the_requests_its_ring_thread_moved_itself(string setting, string engine)
    {
        string images = Directory.CreateDirectory(Path.Combine(_work.Path, "images")).FullName;
        string image = Path.Combine(images, "disk.img");
        using (FileStream file = File.Create(image))
        {
            file.SetLength(16 << 20);
        }

        await using SimulatedService service = await SimulatedService.StartAsync(_work.Path, images, new Dictionary<string, string?> { ["Backend:IoEngine"] = setting });
        AttachedDisk disk = await service.AttachAsync(image);
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(0, await disk.Frontend!.WriteAsync(i * 8, new byte[4096]).WaitAsync(SimulatedService.Timeout));
        }

        Assert.Equal(0, await disk.Frontend!.ReadAsync(0, new byte[4096]).WaitAsync(SimulatedService.Timeout));

        ServiceStatusReport status = await service.StatusAsync();
        IReadOnlyList<QueueReport> queues = status.Devices.Single(d => d.BackendPath == disk.BackendPath).Queues;
        Assert.NotEmpty(queues);
        Assert.All(queues, q => Assert.Equal(engine, q.Engine));
        Assert.Equal(4, queues.Sum(q => q.Requests));

        // A raw file's reads and writes all take io_uring's fast path; the thread engine has none.
        Assert.Equal(engine == BlkifRing.IoUringEngineName ? 4 : 0, queues.Sum(q => q.FastPathRequests));
        string text = StatusTextFormatter.Format(status);
        foreach (QueueReport queue in queues.Where(q => q.Requests > 0))
        {
            string expected = engine == BlkifRing.IoUringEngineName ? "io_uring, 100% of requests on the fast path" : "threads";
            Assert.Matches($@"{queue.Index}: \d+ page\(s\), \d+ slots, 0 in flight, {Regex.Escape(expected)}[;\n]", text);
        }
    }

    [Theory]
    [InlineData("", 0, 0, "")]
    [InlineData(BlkifRing.ThreadsEngineName, 5, 0, ", threads")]
    [InlineData(BlkifRing.IoUringEngineName, 0, 0, ", io_uring")]
    [InlineData(BlkifRing.IoUringEngineName, 4, 1, ", io_uring, 25% of requests on the fast path")]
    public void The_engine_clause_says_nothing_before_the_ring_has_started_and_no_share_before_a_request(string engine, long requests, long fast, string expected) =>
        Assert.Equal(expected, StatusTextFormatter.Engine(new QueueReport(0, true, 1, 32, 0, false, requests, engine, fast)));

    private static FeaturesReport Features(ServiceStatusReport status, AttachedDisk disk) =>
        status.Devices.Single(d => d.BackendPath == disk.BackendPath).Features!;
}
