using XenDisk.Abi;
using XenDisk.Backend.DataPlane;
using XenDisk.Backend.Tests.DataPlane.Harness;
using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Storage;
using XenDisk.Storage;
using XenDisk.Xen.Simulated;

namespace XenDisk.Backend.Tests.DataPlane;

/// <summary>
/// Group commit of overlay mapping writes (<see cref="PublicationGroup"/>): a request whose write
/// changed the mapping is answered only after a publication that began after its write, and one
/// publication covers every request that joined while the previous one ran. Then the whole ring over
/// real overlay files: every answered allocating write's mapping is in the file, where a successor
/// (after a kill, with the page cache intact) would find it.
/// </summary>
public sealed class GroupCommitTests : IDisposable
{
    private readonly TempDirectory _directory = new("xendisk-groupcommit-");

    public void Dispose() => _directory.Dispose();

    [Fact]
    public async Task Requests_joining_while_a_publication_runs_are_covered_by_one_more_publication()
    {
        var device = new GatedPublisher();
        var covered = new List<int[]>();
        var group = new PublicationGroup(device, 8, (contexts, status, failure) =>
        {
            Assert.Equal(IoStatus.Ok, status);
            Assert.Null(failure);
            lock (covered)
            {
                covered.Add(contexts.ToArray());
            }
        });

        // The first joiner leads and stops inside its publication.
        Task leader = Task.Factory.StartNew(() => group.Join(0), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        await device.Entered.WaitAsync(RingConnection.HangGuard);

        // Others join meanwhile and return at once, answered by nobody yet.
        group.Join(1);
        group.Join(2);
        group.Join(3);
        lock (covered)
        {
            Assert.Empty(covered);
        }

        device.Release();
        await leader.WaitAsync(RingConnection.HangGuard);

        // Two publications: the leader's own, then one for all three that joined during it.
        Assert.Equal(2, device.Publications);
        Assert.Equal([[0], [1, 2, 3]], covered);
    }

    [Fact]
    public void A_failed_publication_reaches_every_request_it_covered_and_the_next_joiner_publishes_again()
    {
        var device = new GatedPublisher { Result = IoStatus.IoError };
        device.Release();
        var seen = new List<(int Context, IoStatus Status)>();
        var group = new PublicationGroup(device, 4, (contexts, status, _) =>
        {
            foreach (int context in contexts)
            {
                seen.Add((context, status));
            }
        });

        group.Join(2);
        device.Result = IoStatus.Ok;
        group.Join(3);

        Assert.Equal([(2, IoStatus.IoError), (3, IoStatus.Ok)], seen);
        Assert.Equal(2, device.Publications);
    }

    [Fact]
    public void A_device_that_throws_fails_the_covered_requests_and_hands_the_exception_on()
    {
        var device = new GatedPublisher { Throw = true };
        device.Release();
        Exception? handed = null;
        IoStatus outcome = IoStatus.Ok;
        var group = new PublicationGroup(device, 2, (_, status, failure) =>
        {
            outcome = status;
            handed = failure;
        });

        group.Join(1);

        Assert.Equal(IoStatus.IoError, outcome);
        Assert.IsType<InvalidOperationException>(handed);
    }

    public static TheoryData<string, IoEngine> Overlays() => new()
    {
        { "qcow2", IoEngine.IoUring },
        { "qcow2", IoEngine.Threads },
        { "bitmap", IoEngine.IoUring },
        { "bitmap", IoEngine.Threads },
    };

    [Theory]
    [MemberData(nameof(Overlays))]
    public async Task Every_answered_allocating_write_of_a_full_ring_is_mapped_in_the_file(string format, IoEngine engine)
    {
        const long Size = 64 << 20;
        const int Stride = 64 << 10;
        string path = Path.Combine(_directory.Path, "overlay." + format);
        string basePath = Path.Combine(_directory.Path, "base.raw");
        File.WriteAllBytes(basePath, new byte[Size]);
        IBlockDevice overlay = format == "qcow2" ? CreateQcow2(path, Size) : CreateBitmap(path, basePath, Size);

        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest", memoryPages: 4096);
        int requests;
        await using (var connection = new RingConnection(hypervisor, guest, overlay,
            options: new DataPlaneOptions { IoEngine = engine, IoThreadsPerRing = 4 }).Start())
        {
            // A full ring of first writes, one page each into its own cluster (or grain): every one
            // allocates and so takes the slow path, several at once on the I/O threads.
            requests = connection.Entries;
            using var pages = new GuestBuffers(guest, requests, readOnly: true);
            var slots = new byte[requests][];
            for (int i = 0; i < requests; i++)
            {
                pages.Page(i).Fill(Pattern(i));
                slots[i] = WireSlots.ReadWrite(BlkifProtocol.X86_64, BlkifOperation.Write, (ulong)i, (ulong)(i * Stride / 512),
                    [new Seg(pages.Ref(i), 0, BlkifLimits.MaxSectorInPage)]);
            }

            Assert.All(connection.Submit(slots), response => Assert.Equal(BlkifStatus.Okay, response.Status));

            // As a successor would find the file if the service were killed now: no flush, no close.
            string copy = Path.Combine(_directory.Path, "after-answers." + format);
            File.Copy(path, copy);
            using IBlockDevice successor = format == "qcow2"
                ? Qcow2Image.Open(OverlayFiles.OpenQcow2(copy, readOnly: false), null, new Qcow2OpenOptions { Policy = MetadataPolicy.Flush, OwnsDevices = true })
                : BitmapOverlay.Open(RawBlockDevice.Open(copy, readOnly: false), RawBlockDevice.Open(basePath, readOnly: true), new BitmapOverlayOptions { Policy = MetadataPolicy.Flush });
            byte[] read = new byte[4096];
            for (int i = 0; i < requests; i++)
            {
                Assert.Equal(IoStatus.Ok, successor.ReadAt((long)i * Stride, read));
                Assert.True(read.AsSpan().IndexOfAnyExcept(Pattern(i)) < 0, $"request {i}: its answered write is not mapped in the file");
            }

            Assert.Equal(0, connection.Statistics.StorageErrors);
            await connection.Ring.StopAsync();
        }

        overlay.Dispose();
    }

    private static byte Pattern(int request) => (byte)(0x40 + request);

    private static Qcow2Image CreateQcow2(string path, long size)
    {
        using (FileImageDevice file = FileImageDevice.Create(path))
        {
            Qcow2Image.Create(file, new Qcow2CreateOptions { VirtualSize = size, ClusterSize = 64 << 10, ExtendedL2 = true });
        }

        return Qcow2Image.Open(OverlayFiles.OpenQcow2(path, readOnly: false), null, new Qcow2OpenOptions { Policy = MetadataPolicy.Flush, OwnsDevices = true });
    }

    private static BitmapOverlay CreateBitmap(string path, string basePath, long size)
    {
        const int Grain = 4096;
        File.WriteAllBytes(path, new byte[BitmapOverlay.RequiredCowSize(size, Grain)]);
        return BitmapOverlay.Create(RawBlockDevice.Open(path, readOnly: false), RawBlockDevice.Open(basePath, readOnly: true),
            new BitmapCreateOptions { GrainSize = Grain }, new BitmapOverlayOptions { Policy = MetadataPolicy.Flush });
    }

    /// <summary>A group-commit device whose publications wait for the test to release them.</summary>
    private sealed class GatedPublisher : IGroupCommitDevice
    {
        private readonly ManualResetEventSlim _gate = new();
        private readonly TaskCompletionSource _entered = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _publications;

        public IoStatus Result { get; set; } = IoStatus.Ok;

        public bool Throw { get; init; }

        public Task Entered => _entered.Task;

        public int Publications => Volatile.Read(ref _publications);

        public void Release() => _gate.Set();

        public IoStatus Publish()
        {
            Interlocked.Increment(ref _publications);
            _entered.TrySetResult();
            Assert.True(_gate.Wait(RingConnection.HangGuard));
            return Throw ? throw new InvalidOperationException("broken contract") : Result;
        }

        public IoStatus WriteUnpublished(long offset, ReadOnlySpan<IoBuffer> buffers, out bool publish) => throw new NotSupportedException();

        public BlockDeviceInfo Info => throw new NotSupportedException();

        public bool CompletesInline => false;

        public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers) => throw new NotSupportedException();

        public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers) => throw new NotSupportedException();

        public IoStatus Flush() => throw new NotSupportedException();

        public IoStatus Discard(long offset, long length, bool secure) => throw new NotSupportedException();

        public BlockDeviceInfo Refresh() => throw new NotSupportedException();

        public void Dispose() => _gate.Dispose();
    }
}
