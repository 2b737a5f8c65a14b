using System.Runtime.InteropServices;
using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Policies;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Storage;
using XenDisk.Cow.Overlays;
using XenDisk.Storage;

namespace XenDisk.Cli.Bench;

// The runs: XenDisk's engine driven from worker threads, and QEMU's through qemu-img bench.
internal static partial class CowBenchmark
{
    /// <summary>What writes carry: non-zero, so that no layer can take a shortcut for zeros.</summary>
    private const byte WritePattern = 0x5a;

    /// <summary>The base is written in pieces of this size.</summary>
    private const int BaseChunk = 1024 * 1024;

    private static List<Measurement> RunXenDisk(Configuration configuration, string directory, string basePath, CowBenchSettings settings, long requests,
        Action<string> log, CancellationToken cancellationToken)
    {
        List<Measurement> runs = [];
        void Record(Measurement m)
        {
            runs.Add(m);
            log(Describe(configuration, m));
        }

        if (configuration.Layout == Layout.Raw)
        {
            using RawBlockDevice raw = RawBlockDevice.Open(basePath, readOnly: false);
            foreach (Phase phase in Phases)
            {
                Record(Drive(raw, phase, requests, settings.QueueDepth, deadline: null, cancellationToken));
            }
            return runs;
        }

        string slug = configuration.Name.Replace(' ', '-');
        foreach ((Phase first, Phase second, string suffix) in new[] { (Phase.FirstWrite4K, Phase.Rewrite4K, "a"), (Phase.ReadBase4K, Phase.SequentialWrite64K, "b") })
        {
            string overlayPath = Path.Combine(directory, $"{slug}-{suffix}.img");
            IBlockDevice device = OpenFresh(configuration, overlayPath, basePath, settings.SizeBytes);
            try
            {
                Record(Drive(device, first, requests, settings.QueueDepth, deadline: null, cancellationToken));
                if (configuration.Policy != MetadataPolicy.Transient)
                {
                    // QEMU's runs are separate processes: the second phase starts from a reopened image (cold caches) there, so here too.
                    Close(device);
                    device = Reopen(configuration, overlayPath, basePath);
                }
                Record(Drive(device, second, requests, settings.QueueDepth, deadline: null, cancellationToken));
            }
            finally
            {
                Close(device);
                File.Delete(overlayPath);
            }
        }
        return runs;
    }

    private static IBlockDevice OpenFresh(Configuration configuration, string overlayPath, string basePath, long size)
    {
        MetadataPolicy policy = configuration.Policy ?? MetadataPolicy.Flush;
        if (configuration.Layout == Layout.Qcow2)
        {
            Qcow2Disk.Create(overlayPath, new Qcow2CreateOptions
            {
                VirtualSize = size,
                ClusterSize = ClusterSize,
                ExtendedL2 = configuration.ExtendedL2,
                BackingFile = basePath,
                BackingFormat = "raw",
                LazyRefcounts = configuration.LazyRefcounts,
            });
            return Reopen(configuration, overlayPath, basePath);
        }
        // Full: zeros written, as on the pre-sized block device the flat format is made for; falloc: a
        // file as the provider creates one, allocated but unwritten.
        OverlayFiles.CreateBitmapFile(overlayPath, BitmapOverlay.RequiredCowSize(size, SmallRequest), configuration.BitmapFile);
        RawBlockDevice cow = RawBlockDevice.Open(overlayPath, readOnly: false);
        RawBlockDevice? baseDevice = null;
        try
        {
            baseDevice = RawBlockDevice.Open(basePath, readOnly: true);
            return BitmapOverlay.Create(cow, baseDevice, new BitmapCreateOptions { GrainSize = SmallRequest, BaseName = basePath },
                new BitmapOverlayOptions { Policy = policy, OwnsDevices = true });
        }
        catch
        {
            baseDevice?.Dispose();
            cow.Dispose();
            throw;
        }
    }

    private static IBlockDevice Reopen(Configuration configuration, string overlayPath, string basePath)
    {
        MetadataPolicy policy = configuration.Policy ?? MetadataPolicy.Flush;
        RawBlockDevice baseDevice = RawBlockDevice.Open(basePath, readOnly: true);
        IBlockDevice? overlay = null;
        try
        {
            if (configuration.Layout == Layout.Qcow2)
            {
                overlay = OverlayFiles.OpenQcow2(overlayPath, readOnly: false);
                return Qcow2Image.Open(overlay, baseDevice, new Qcow2OpenOptions { Policy = policy, OwnsDevices = true });
            }
            overlay = RawBlockDevice.Open(overlayPath, readOnly: false);
            return BitmapOverlay.Open(overlay, baseDevice, new BitmapOverlayOptions { Policy = policy, OwnsDevices = true });
        }
        catch
        {
            overlay?.Dispose();
            baseDevice.Dispose();
            throw;
        }
    }

    /// <summary>Closes an overlay cleanly (metadata written back), outside any timing.</summary>
    private static void Close(IBlockDevice device)
    {
        IoStatus status = device is IOverlayImage overlay ? overlay.Close() : IoStatus.Ok;
        device.Dispose();
        if (status != IoStatus.Ok)
        {
            throw new CowBenchException($"closing {device.Info.Description} failed ({status.Describe()})");
        }
    }

    /// <summary>
    /// Issues <paramref name="requests"/> requests of the phase's shape at offsets i * cluster, in
    /// ascending order, from <paramref name="depth"/> threads each with one request in flight (queue
    /// depth <paramref name="depth"/>, as qemu-img bench -d). Times from the first request to the last
    /// completion; threads and buffers are made before the clock starts.
    /// </summary>
    private static unsafe Measurement Drive(IBlockDevice device, Phase phase, long requests, int depth, TimeSpan? deadline, CancellationToken cancellationToken)
    {
        (int bufferSize, bool write) = Shape(phase);
        long next = -1;
        long errors = 0;
        long completed = 0;
        long deadlineTicks = deadline is TimeSpan d ? (long)(d.TotalSeconds * System.Diagnostics.Stopwatch.Frequency) : long.MaxValue;
        long startTicks = 0;
        using ManualResetEventSlim go = new();
        using CountdownEvent ready = new(depth);
        Thread[] workers = new Thread[depth];
        for (int w = 0; w < depth; w++)
        {
            workers[w] = new Thread(() =>
            {
                byte* memory = (byte*)NativeMemory.AlignedAlloc((nuint)bufferSize, AlignedBufferPool.PageSize);
                try
                {
                    new Span<byte>(memory, bufferSize).Fill(WritePattern);
                    IoBuffer buffer = new((nint)memory, bufferSize);
                    ready.Signal();
                    go.Wait();
                    while (!cancellationToken.IsCancellationRequested)
                    {
                        long i = Interlocked.Increment(ref next);
                        if (i >= requests || System.Diagnostics.Stopwatch.GetTimestamp() - Volatile.Read(ref startTicks) > deadlineTicks)
                        {
                            break;
                        }
                        ReadOnlySpan<IoBuffer> buffers = new(in buffer);
                        IoStatus status = write ? device.Write(i * ClusterSize, buffers) : device.Read(i * ClusterSize, buffers);
                        if (status != IoStatus.Ok)
                        {
                            Interlocked.Increment(ref errors);
                        }
                        Interlocked.Increment(ref completed);
                    }
                }
                finally
                {
                    NativeMemory.AlignedFree(memory);
                }
            })
            { IsBackground = true, Name = $"bench-cow-{w}" };
            workers[w].Start();
        }
        ready.Wait(cancellationToken);
        Volatile.Write(ref startTicks, System.Diagnostics.Stopwatch.GetTimestamp());
        go.Set();
        foreach (Thread worker in workers)
        {
            worker.Join();
        }
        double seconds = System.Diagnostics.Stopwatch.GetElapsedTime(startTicks).TotalSeconds;
        cancellationToken.ThrowIfCancellationRequested();
        return new Measurement(phase, completed, seconds, errors, errors == completed && completed > 0 ? "every request failed" : null);
    }

    /// <summary>Raw 4 KiB reads of the base for a moment: the rate that sizes the runs to the target time.</summary>
    private static double Calibrate(string basePath, long clusters, int depth)
    {
        using RawBlockDevice raw = RawBlockDevice.Open(basePath, readOnly: true);
        Measurement m = Drive(raw, Phase.ReadBase4K, clusters, depth, CalibrationTime, CancellationToken.None);
        return m.Seconds > 0 ? m.Requests / m.Seconds : 0;
    }

    /// <summary>Writes the whole base with non-zero data (a different byte per MiB) and flushes it.</summary>
    private static unsafe void WriteBase(string path, long size, Action<string> log)
    {
        using (var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite))
        {
            RandomAccess.SetLength(handle, size);
        }
        using RawBlockDevice device = RawBlockDevice.Open(path, readOnly: false);
        byte* memory = (byte*)NativeMemory.AlignedAlloc(BaseChunk, AlignedBufferPool.PageSize);
        try
        {
            Span<byte> chunk = new(memory, BaseChunk);
            double seconds = Seconds(() =>
            {
                for (long at = 0; at < size; at += BaseChunk)
                {
                    int length = (int)Math.Min(BaseChunk, size - at);
                    new Span<byte>(memory, length).Fill((byte)(at / BaseChunk % 255 + 1));
                    IoBuffer buffer = new((nint)memory, length);
                    IoStatus status = device.Write(at, new ReadOnlySpan<IoBuffer>(in buffer));
                    if (status != IoStatus.Ok)
                    {
                        throw new CowBenchException($"writing the base {path} failed at offset {at} ({status.Describe()})");
                    }
                }
                if (device.Flush() is var flushed && flushed != IoStatus.Ok)
                {
                    throw new CowBenchException($"flushing the base {path} failed ({flushed.Describe()})");
                }
            });
            log(Invariant($"base written: {size / seconds / (1 << 20):N0} MiB/s"));
        }
        finally
        {
            NativeMemory.AlignedFree(memory);
        }
    }

    private static List<Measurement> RunQemu(Configuration configuration, string qemuImg, string aio, string directory, string basePath, CowBenchSettings settings, long requests,
        Action<string> log, CancellationToken cancellationToken)
    {
        List<Measurement> runs = [];
        void Record(Measurement m)
        {
            runs.Add(m);
            log(Describe(configuration, m));
        }

        if (configuration.Layout == Layout.Raw)
        {
            foreach (Phase phase in Phases)
            {
                cancellationToken.ThrowIfCancellationRequested();
                Record(QemuImg.Bench(qemuImg, "raw", basePath, aio, settings.QueueDepth, requests, phase));
            }
            return runs;
        }
        string slug = configuration.Name.Replace(' ', '-');
        foreach ((Phase first, Phase second, string suffix) in new[] { (Phase.FirstWrite4K, Phase.Rewrite4K, "a"), (Phase.ReadBase4K, Phase.SequentialWrite64K, "b") })
        {
            cancellationToken.ThrowIfCancellationRequested();
            string overlayPath = Path.Combine(directory, $"{slug}-{suffix}.qcow2");
            QemuImg.CreateOverlay(qemuImg, overlayPath, basePath, configuration.Options);
            try
            {
                Record(QemuImg.Bench(qemuImg, "qcow2", overlayPath, aio, settings.QueueDepth, requests, first));
                cancellationToken.ThrowIfCancellationRequested();
                Record(QemuImg.Bench(qemuImg, "qcow2", overlayPath, aio, settings.QueueDepth, requests, second));
            }
            finally
            {
                File.Delete(overlayPath);
            }
        }
        return runs;
    }

    private static string Describe(Configuration configuration, Measurement m) => m.Failure != null
        ? $"{configuration.Name}, {PhaseName(m.Phase)}: failed: {m.Failure}"
        : Invariant($"{configuration.Name}, {PhaseName(m.Phase)}: {m.Iops:N0} IOPS ({m.Requests} requests in {m.Seconds:0.000} s{(m.Errors > 0 ? $", {m.Errors} failed" : "")})");
}
