using Microsoft.Win32.SafeHandles;
using XenDisk.Abi;
using XenDisk.Backend.DataPlane;
using XenDisk.Backend.Tests.DataPlane.Harness;
using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Policies;
using XenDisk.Storage;
using XenDisk.Xen.Simulated;

namespace XenDisk.Backend.Tests.DataPlane;

/// <summary>
/// The ring over a real file through each I/O engine: io_uring (the fast path: remapped extents read
/// and written from the guest's pages by the ring thread) and the thread engine (blocking calls on
/// I/O threads). Every byte is checked against the file itself, and teardown with I/O in flight is
/// checked in the simulator's quarantine mode, where a write into a page after its unmap is seen.
/// </summary>
public sealed class IoEngineTests : IDisposable
{
    private const long DiskBytes = 4 << 20;
    private const byte R = BlkifOperation.Read;
    private const byte W = BlkifOperation.Write;

    private readonly TempDirectory _directory = new("xendisk-engine-");

    public void Dispose() => _directory.Dispose();

    public static TheoryData<IoEngine, DataPath, bool> Engines()
    {
        var data = new TheoryData<IoEngine, DataPath, bool>();
        foreach (IoEngine engine in (IoEngine[])[IoEngine.IoUring, IoEngine.Threads])
        {
            data.Add(engine, DataPath.GrantMap, true);
            data.Add(engine, DataPath.GrantMap, false);
            data.Add(engine, DataPath.GrantCopy, false);
        }

        return data;
    }

    private RawBlockDevice CreateDisk(byte fill = 0)
    {
        string path = Path.Combine(_directory.Path, "disk.img");
        byte[] contents = new byte[DiskBytes];
        Array.Fill(contents, fill);
        File.WriteAllBytes(path, contents);
        return RawBlockDevice.Open(path, readOnly: false);
    }

    private static byte[] FileBytes(RawBlockDevice disk, long offset, int length)
    {
        using var stream = new FileStream(disk.Path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        byte[] data = new byte[length];
        stream.Position = offset;
        stream.ReadExactly(data);
        return data;
    }

    [Theory]
    [MemberData(nameof(Engines))]
    public async Task Requests_in_flight_together_move_every_byte_through_the_engine(IoEngine engine, DataPath path, bool persistent)
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest", memoryPages: 4096);
        using RawBlockDevice disk = CreateDisk();
        await using var connection = new RingConnection(hypervisor, guest, disk,
            features: new NegotiatedFeatures { PersistentGrants = persistent, MaxIndirectSegments = 64, Discard = true },
            options: new DataPlaneOptions { DataPath = path, IoEngine = engine, IoThreadsPerRing = 2 }).Start();
        Assert.Equal(engine == IoEngine.IoUring ? "io_uring" : "threads", connection.Ring.EngineName);
        Assert.Equal(engine == IoEngine.IoUring && path == DataPath.GrantCopy, connection.Ring.BouncePoolRegistered);

        // The whole ring at once: direct writes with partial segments, an indirect write, a flush with data.
        const int direct = 29;
        var buffers = new List<GuestBuffers>();
        var slots = new List<byte[]>();
        for (int i = 0; i < direct; i++)
        {
            // Persistent grants are mapped writable whatever the request, so the frontend grants them so.
            var pages = new GuestBuffers(guest, 2, readOnly: !persistent);
            pages.Page(0).Fill((byte)(i + 1));
            pages.Page(1).Fill((byte)(i + 101));
            buffers.Add(pages);
            slots.Add(WireSlots.ReadWrite(BlkifProtocol.X86_64, W, (ulong)i, (ulong)i * 16, [new(pages.Ref(0), 2, 7), new(pages.Ref(1), 0, 5)]));
        }

        var indirectData = new GuestBuffers(guest, 40, readOnly: !persistent);
        var indirectPage = new GuestBuffers(guest, 1, readOnly: !persistent);
        for (int i = 0; i < 40; i++)
        {
            indirectData.Page(i).Fill((byte)(0x80 + i));
        }

        WireSlots.WriteIndirectSegments(indirectPage.Page(0), indirectData.FullSegments());
        slots.Add(WireSlots.Indirect(BlkifProtocol.X86_64, W, 100, 2048, 40, [indirectPage.Ref(0)]));

        var fua = new GuestBuffers(guest, 1, readOnly: !persistent);
        fua.Page(0).Fill(0xF0);
        slots.Add(WireSlots.ReadWrite(BlkifProtocol.X86_64, BlkifOperation.FlushDiskCache, 101, 4096, fua.FullSegments()));
        slots.Add(WireSlots.Discard(BlkifProtocol.X86_64, 102, 6144, 16));

        WireSlots.Response[] responses = connection.Submit([.. slots]);
        Assert.Equal([], responses.Where(r => r.Status != BlkifStatus.Okay).Select(r => r.Id));
        Assert.Equal(slots.Count, responses.Select(r => r.Id).Distinct().Count());

        for (int i = 0; i < direct; i++)
        {
            byte[] written = FileBytes(disk, i * 16 * 512, 12 * 512);
            Assert.True(written.AsSpan(0, 6 * 512).IndexOfAnyExcept((byte)(i + 1)) < 0, $"request {i}, first segment");
            Assert.True(written.AsSpan(6 * 512).IndexOfAnyExcept((byte)(i + 101)) < 0, $"request {i}, second segment");
        }

        byte[] indirect = FileBytes(disk, 2048 * 512, 40 * 4096);
        for (int i = 0; i < 40; i++)
        {
            Assert.True(indirect.AsSpan(i * 4096, 4096).IndexOfAnyExcept((byte)(0x80 + i)) < 0, $"indirect segment {i}");
        }

        Assert.True(FileBytes(disk, 4096 * 512, 4096).AsSpan().IndexOfAnyExcept((byte)0xF0) < 0);

        // Read everything back through the ring into fresh pages.
        using (var pages = new GuestBuffers(guest, 3, readOnly: false))
        {
            WireSlots.Response readBack = connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, 200, 16, [new(pages.Ref(0), 0, 7), new(pages.Ref(1), 0, 3), new(pages.Ref(2), 4, 7)]));
            Assert.True(readBack.Status == BlkifStatus.Okay, $"read back: {readBack}, guest errors {connection.Statistics.GuestErrors}, storage errors {connection.Statistics.StorageErrors}");
            Assert.Equal(FileBytes(disk, 16 * 512, 4096), pages.Page(0).ToArray());
            Assert.Equal(FileBytes(disk, (16 * 512) + 4096, 2048), pages.Page(1)[..2048].ToArray());
            Assert.Equal(FileBytes(disk, (16 * 512) + 6144, 2048), pages.Page(2)[2048..].ToArray());
        }

        // A one-page read, which grant copy under io_uring issues as READ_FIXED from the registered pool
        // (the flush's one-page write above went as WRITE_FIXED).
        using (var page = new GuestBuffers(guest, 1, readOnly: false))
        {
            WireSlots.Response single = connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, 201, 4096, page.FullSegments()));
            Assert.Equal(BlkifStatus.Okay, single.Status);
            Assert.Equal(FileBytes(disk, 4096 * 512, 4096), page.Page(0).ToArray());
            Assert.True(page.Page(0).ToArray().AsSpan().IndexOfAnyExcept((byte)0xF0) < 0);
        }

        Assert.Equal(0, connection.Statistics.StorageErrors);
        buffers.ForEach(b => b.Dispose());
        indirectData.Dispose();
        indirectPage.Dispose();
        fua.Dispose();
        await connection.Ring.StopAsync();
        Assert.Equal(0, connection.DataPagesMapped);
    }

    [Fact]
    public async Task Grant_copy_reads_that_finish_together_reach_their_guests_in_one_copy()
    {
        // A file on a RAM file system: no O_DIRECT, so io_uring finishes a read from the page cache
        // inside the system call that submits it, and such reads are reaped together.
        Assert.True(Directory.Exists("/dev/shm"), "this test needs /dev/shm (a RAM file system)");
        using var ram = new TempDirectory("xendisk-copy-", "/dev/shm");
        string path = ram.File("disk.img");
        byte[] contents = new byte[DiskBytes];
        for (int page = 0; page < contents.Length / 4096; page++)
        {
            Array.Fill(contents, (byte)(page + 1), page * 4096, 4096);
        }

        File.WriteAllBytes(path, contents);
        using RawBlockDevice disk = RawBlockDevice.Open(path, readOnly: false);
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest", memoryPages: 4096);
        await using var connection = new RingConnection(hypervisor, guest, disk,
            options: new DataPlaneOptions { DataPath = DataPath.GrantCopy, IoEngine = IoEngine.IoUring }).Start();

        // Rounds of sixteen one-page reads and one whose grant reference the guest never granted.
        const int reads = 16;
        const int rounds = 5;
        using var pages = new GuestBuffers(guest, reads, readOnly: false);
        long copiesBefore = connection.BackendGrants.CopyOperations;
        for (int round = 0; round < rounds; round++)
        {
            var slots = new List<byte[]>();
            for (int i = 0; i < reads; i++)
            {
                pages.Page(i).Clear();
                int diskPage = (round * reads) + i;
                slots.Add(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, (ulong)i, (ulong)diskPage * 8, [new(pages.Ref(i), 0, 7)]));
            }

            slots.Add(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, 99, 0, [new(4000, 0, 7)]));
            WireSlots.Response[] responses = connection.Submit([.. slots]);

            Assert.Equal(BlkifStatus.Error, responses.Single(r => r.Id == 99).Status);
            Assert.All(responses.Where(r => r.Id != 99), r => Assert.Equal(BlkifStatus.Okay, r.Status));
            for (int i = 0; i < reads; i++)
            {
                Assert.True(pages.Page(i).IndexOfAnyExcept((byte)((round * reads) + i + 1)) < 0, $"round {round}, read {i}");
            }
        }

        // Each round's reads were taken and submitted together; those that finished inside the
        // submitting call (nearly all: io_uring hands a read it cannot finish at once to a worker) were
        // reaped together and went to the guest in one copy operation, the bad grant failing only its
        // own request. One copy per read would make every operation one segment long.
        Assert.InRange(connection.BackendGrants.LargestCopy, 2, reads + 1);
        Assert.InRange(connection.BackendGrants.CopyOperations - copiesBefore, rounds, (rounds * (reads + 1)) - 1);
        Assert.Equal(rounds, connection.Statistics.GuestErrors);
    }

    [Fact]
    public async Task Indirect_pages_go_through_the_persistent_grant_cache()
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest", memoryPages: 4096);
        using RawBlockDevice disk = CreateDisk();
        await using var connection = new RingConnection(hypervisor, guest, disk,
            features: new NegotiatedFeatures { PersistentGrants = true, MaxIndirectSegments = 32 }).Start();
        using var data = new GuestBuffers(guest, 20, readOnly: false);
        using var indirectPage = new GuestBuffers(guest, 1, readOnly: false);
        WireSlots.WriteIndirectSegments(indirectPage.Page(0), data.FullSegments());

        for (int i = 0; i < 10; i++)
        {
            AssertOkay(connection.SubmitOne(WireSlots.Indirect(BlkifProtocol.X86_64, W, (ulong)i, 0, 20, [indirectPage.Ref(0)])));
        }

        // 21 distinct grants (20 data pages and the indirect page), each mapped once and then reused.
        Assert.Equal(21, connection.Statistics.GrantMaps);
        Assert.Equal(0, connection.Statistics.GrantUnmaps);
    }

    [Theory]
    [InlineData(4)]
    [InlineData(64)]
    public async Task A_full_ring_reaches_the_kernel_in_submission_batches(int submissionBatch)
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest", memoryPages: 4096);
        using RawBlockDevice disk = CreateDisk(fill: 0x5A);
        await using var connection = new RingConnection(hypervisor, guest, disk,
            features: new NegotiatedFeatures { PersistentGrants = true },
            options: new DataPlaneOptions { IoEngine = IoEngine.IoUring, SubmissionBatch = submissionBatch }).Start();
        using var pages = new GuestBuffers(guest, 32, readOnly: false);

        // 32 one-page reads published at once: the ring takes them in one pass.
        byte[][] slots = [.. Enumerable.Range(0, 32).Select(i => WireSlots.ReadWrite(BlkifProtocol.X86_64, R, (ulong)i, (ulong)i * 8, [new(pages.Ref(i), 0, 7)]))];
        Assert.All(connection.Submit(slots), AssertOkay);
        Assert.All(Enumerable.Range(0, 32), i => Assert.True(pages.Page(i).IndexOfAnyExcept((byte)0x5A) < 0, $"page {i}"));

        uint largest = connection.Ring.LargestEngineSubmission;
        if (submissionBatch < 32)
        {
            // At most a batch of reads, or what is left of them with the loop's own control operations
            // (the event channel's read and unmask, the wake-up poll, a timeout) when it goes to sleep.
            Assert.InRange(largest, 1u, (uint)submissionBatch + 5);
        }
        else
        {
            Assert.True(largest >= 32, $"largest submission {largest}");
        }
    }

    [Theory]
    [InlineData(IoEngine.IoUring)]
    [InlineData(IoEngine.Threads)]
    public async Task IO_threads_start_only_when_requests_need_them(IoEngine engine)
    {
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest", memoryPages: 4096);
        using RawBlockDevice disk = CreateDisk();
        await using var connection = new RingConnection(hypervisor, guest, disk,
            features: new NegotiatedFeatures { PersistentGrants = true, MaxIndirectSegments = 32, Discard = true },
            options: new DataPlaneOptions { IoEngine = engine, IoThreadsPerRing = 3 }).Start();
        using var pages = new GuestBuffers(guest, 16, readOnly: false);

        // Three bursts of a full ring each: reads, writes and a flush at once.
        for (int burst = 0; burst < 3; burst++)
        {
            var slots = new List<byte[]>();
            for (int i = 0; i < 31; i++)
            {
                byte operation = i % 2 == 0 ? W : R;
                slots.Add(WireSlots.ReadWrite(BlkifProtocol.X86_64, operation, (ulong)i, (ulong)i * 8, [new(pages.Ref(i % 16), 0, 7)]));
            }

            slots.Add(WireSlots.ReadWrite(BlkifProtocol.X86_64, BlkifOperation.FlushDiskCache, 31, 0, []));
            Assert.All(connection.Submit([.. slots]), AssertOkay);
        }

        if (engine == IoEngine.IoUring)
        {
            // Every read, write and flush moved by the ring thread itself: no I/O thread was needed.
            Assert.Equal(0, connection.Statistics.IoThreadsStarted);
            Assert.Equal(3 * 32, connection.Statistics.FastPathRequests);

            // A discard has no io_uring operation here: the slow path starts its first thread.
            AssertOkay(connection.SubmitOne(WireSlots.Discard(BlkifProtocol.X86_64, 100, 2048, 16)));
            Assert.Equal(1, connection.Statistics.IoThreadsStarted);
        }
        else
        {
            // Everything goes through the threads; bursts of a full ring start them, never past the limit.
            Assert.InRange(connection.Statistics.IoThreadsStarted, 1, 3);
        }
    }

    [Fact]
    public async Task Stop_waits_for_engine_reads_in_flight_before_any_page_is_unmapped()
    {
        using var hypervisor = new SimulatedHypervisor { QuarantineUnmappedPages = true };
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var disk = new PipeDevice();
        await using var connection = new RingConnection(hypervisor, guest, disk,
            options: new DataPlaneOptions { IoEngine = IoEngine.IoUring }).Start();
        using var pages = new GuestBuffers(guest, 1, readOnly: false);

        connection.Queue(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, 1, 0, pages.FullSegments()));
        connection.Publish();
        RingConnection.WaitUntil(() => disk.Remapped == 1, "the read to be remapped onto the pipe");
        Task stopping = connection.Ring.StopAsync();
        Assert.False(stopping.IsCompleted);

        disk.Feed(0x3C);
        await stopping.WaitAsync(RingConnection.HangGuard);
        Assert.Equal(BlkifStatus.Okay, connection.WaitForResponses(1)[0].Status);
        Assert.True(pages.Page(0).IndexOfAnyExcept((byte)0x3C) < 0);
        Assert.Equal(0, connection.DataPagesMapped);
        Assert.Equal(0, hypervisor.PagesWrittenAfterUnmap);
    }

    [Fact]
    public async Task A_fault_cancels_engine_reads_in_flight_before_their_pages_are_unmapped()
    {
        using var hypervisor = new SimulatedHypervisor { QuarantineUnmappedPages = true };
        SimulatedDomain guest = hypervisor.CreateDomain("guest");
        using var disk = new PipeDevice { ThrowOnDiscard = true };
        await using var connection = new RingConnection(hypervisor, guest, disk,
            features: new NegotiatedFeatures { Discard = true },
            options: new DataPlaneOptions { IoEngine = IoEngine.IoUring }).Start();
        using var pages = new GuestBuffers(guest, 4, readOnly: false);

        // Reads park on the empty pipe; then a discard takes the slow path and the device throws,
        // which faults the ring with the reads still in the kernel's hands.
        for (int i = 0; i < 4; i++)
        {
            connection.Queue(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, (ulong)i, (ulong)i * 8, [new(pages.Ref(i), 0, 7)]));
        }

        connection.Publish();
        RingConnection.WaitUntil(() => disk.Remapped == 4, "the reads to be remapped onto the pipe");
        // The moment the first page is unmapped, the data arrives: a read still in flight would land
        // in that page's quarantined range.
        int fed = 0;
        hypervisor.AfterQuarantinedUnmap = () =>
        {
            if (Interlocked.Exchange(ref fed, 1) == 0)
            {
                disk.Feed(0x77, pages: 4);
            }
        };
        connection.Queue(WireSlots.Discard(BlkifProtocol.X86_64, 9, 0, 8));
        connection.Publish();
        connection.Notify();
        RingConnection.WaitUntil(() => connection.StoppedUnexpectedlyCount == 1, "the ring to fault");
        Assert.Equal(1, fed);
        Assert.Equal(0, connection.DataPagesMapped);
        Assert.Equal(0, hypervisor.PagesWrittenAfterUnmap);
        await connection.Ring.StopAsync();
    }

    [Theory]
    [InlineData(IoEngine.IoUring, MetadataPolicy.Flush)]
    [InlineData(IoEngine.IoUring, MetadataPolicy.Sync)]
    [InlineData(IoEngine.Threads, MetadataPolicy.Flush)]
    public async Task A_bitmap_overlay_serves_base_overlay_and_zeros_through_the_engine(IoEngine engine, MetadataPolicy policy)
    {
        const int Grain = 4096;
        const long Size = 2 << 20;
        using var hypervisor = new SimulatedHypervisor();
        SimulatedDomain guest = hypervisor.CreateDomain("guest", memoryPages: 4096);
        byte[] model = new byte[Size];
        new Random(5).NextBytes(model);
        string basePath = Path.Combine(_directory.Path, "base.img");
        string cowPath = Path.Combine(_directory.Path, "overlay.bitmap");
        File.WriteAllBytes(basePath, model);
        File.WriteAllBytes(cowPath, new byte[BitmapOverlay.RequiredCowSize(Size, Grain)]);
        var overlayOptions = new BitmapOverlayOptions { Policy = policy };
        BitmapOverlay overlay = BitmapOverlay.Create(RawBlockDevice.Open(cowPath, readOnly: false), RawBlockDevice.Open(basePath, readOnly: true),
            new BitmapCreateOptions { GrainSize = Grain }, overlayOptions);
        await using (var connection = new RingConnection(hypervisor, guest, overlay,
            features: new NegotiatedFeatures { Discard = true },
            options: new DataPlaneOptions { IoEngine = engine, IoThreadsPerRing = 2 }).Start())
        {
            using var pages = new GuestBuffers(guest, 4, readOnly: false);

            // Whole grains into the overlay (the map changes: slow path), then the same grains again
            // (already in the overlay: fast path), a partial write into a base grain (copy-up: slow
            // path), and a discard (slow path).
            void Write(ulong id, long sector, int pageCount, byte value, byte firstSector = 0, byte lastSector = 7)
            {
                Seg[] segments = [.. Enumerable.Range(0, pageCount).Select(i => new Seg(pages.Ref(i), firstSector, lastSector))];
                for (int i = 0; i < pageCount; i++)
                {
                    pages.Page(i).Fill(value);
                }

                AssertOkay(connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, W, id, (ulong)sector, segments)));
                int bytes = (lastSector - firstSector + 1) * 512;
                for (int i = 0; i < pageCount; i++)
                {
                    model.AsSpan((int)(sector * 512) + (i * bytes), bytes).Fill(value);
                }
            }

            Write(1, 64, 4, 0x11);
            Write(2, 64, 4, 0x22);
            Write(3, 72, 2, 0x33);
            Write(4, 1027, 1, 0x44, firstSector: 0, lastSector: 2);
            AssertOkay(connection.SubmitOne(WireSlots.Discard(BlkifProtocol.X86_64, 5, 256, 64)));
            model.AsSpan(256 * 512, 64 * 512).Clear();
            AssertOkay(connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, BlkifOperation.FlushDiskCache, 6, 0, [])));

            // Read the first MiB and a stretch past the discard back, 16 KiB at a time.
            for (long sector = 0; sector < 2048; sector += 32)
            {
                AssertOkay(connection.SubmitOne(WireSlots.ReadWrite(BlkifProtocol.X86_64, R, 100, (ulong)sector, pages.FullSegments())));
                for (int i = 0; i < 4; i++)
                {
                    Assert.True(model.AsSpan((int)(sector * 512) + (i * 4096), 4096).SequenceEqual(pages.Page(i)), $"sector {sector + (i * 8)}");
                }
            }

            Assert.Equal(0, connection.Statistics.StorageErrors);
            await connection.Ring.StopAsync();
        }

        bool fastPath = engine == IoEngine.IoUring;
        Assert.Equal(fastPath, overlay.RemapsGranted > 0);
        overlay.Dispose();

        // Reopened from the files, the overlay reads back the model.
        using BitmapOverlay reopened = BitmapOverlay.Open(RawBlockDevice.Open(cowPath, readOnly: true), RawBlockDevice.Open(basePath, readOnly: true),
            overlayOptions with { ReadOnly = true });
        byte[] actual = new byte[Size];
        Assert.Equal(IoStatus.Ok, reopened.ReadAt(0, actual));
        Assert.True(model.AsSpan().SequenceEqual(actual));
    }

    private static void AssertOkay(WireSlots.Response response) => Assert.Equal(BlkifStatus.Okay, response.Status);

    /// <summary>
    /// A remappable disk whose reads come from a pipe: a read stays in flight in the kernel until the
    /// test feeds the pipe, which makes "I/O in flight at teardown" a state the test controls.
    /// </summary>
    private sealed unsafe class PipeDevice : IRemappableBlockDevice
    {
        private readonly SafeFileHandle _readEnd;
        private readonly SafeFileHandle _writeEnd;
        private int _remapped;

        public PipeDevice()
        {
            int* fds = stackalloc int[2];
            if (Tmds.Linux.LibC.pipe2(fds, Tmds.Linux.LibC.O_CLOEXEC) != 0)
            {
                throw new InvalidOperationException("pipe2 failed");
            }

            _readEnd = new SafeFileHandle(fds[0], ownsHandle: true);
            _writeEnd = new SafeFileHandle(fds[1], ownsHandle: true);
        }

        public bool ThrowOnDiscard { get; init; }

        public int Remapped => Volatile.Read(ref _remapped);

        public BlockDeviceInfo Info { get; } = new() { SizeBytes = DiskBytes, SupportsDiscard = true };

        public bool CompletesInline => false;

        public IReadOnlyList<SafeFileHandle> Files => [_readEnd];

        public bool FlushIsFileSync => false;

        public int Remap(bool write, long offset, long length, ReadOnlySpan<IoBuffer> buffers, Span<FileExtent> extents, out RemapLease lease)
        {
            lease = RemapLease.None;
            if (write)
            {
                return 0;
            }

            // A pipe has no offsets: every read takes the next bytes fed.
            extents[0] = new FileExtent(FileExtentKind.File, 0, 0, length);
            Interlocked.Increment(ref _remapped);
            return 1;
        }

        public void ReleaseLease(RemapLease lease)
        {
        }

        public void Feed(byte value, int pages = 1)
        {
            byte[] data = new byte[pages * 4096];
            Array.Fill(data, value);
            fixed (byte* p = data)
            {
                if (Tmds.Linux.LibC.write((int)_writeEnd.DangerousGetHandle(), p, data.Length) != data.Length)
                {
                    throw new InvalidOperationException("write to the pipe failed");
                }
            }
        }

        public IoStatus Read(long offset, ReadOnlySpan<IoBuffer> buffers) => IoStatus.IoError;

        public IoStatus Write(long offset, ReadOnlySpan<IoBuffer> buffers) => IoStatus.IoError;

        public IoStatus Flush() => IoStatus.Ok;

        public IoStatus Discard(long offset, long length, bool secure) =>
            ThrowOnDiscard ? throw new InvalidOperationException("storage bug") : IoStatus.Ok;

        public BlockDeviceInfo Refresh() => Info;

        public void Dispose()
        {
            _readEnd.Dispose();
            _writeEnd.Dispose();
        }
    }
}
