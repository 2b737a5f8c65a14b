using System.Diagnostics;
using XenDisk.Abi;
using XenDisk.TestFrontend;

namespace XenDisk.Cli.Demo;

/// <summary>
/// A verifying mixed workload for one guest: several workers, each owning a disjoint region of the
/// disk, issue writes, reads, flushes and discards through the guest's blkfront and check every byte
/// they read against a model of what the region must hold. Because a worker awaits each request
/// before the next, the model is exact: any difference is a real data error.
/// </summary>
internal sealed class GuestWorkload
{
    /// <summary>The unit the model tracks: one generation number per 4 KiB block.</summary>
    public const int BlockSize = 4096;
    private const int SectorsPerBlock = BlockSize / BlkifLimits.SectorSize;

    /// <summary>Largest request, in blocks: 256 KiB, large enough to need indirect segments when negotiated.</summary>
    private const int MaxBlocksPerRequest = 64;

    /// <summary>The generation of every block of the shared golden base image.</summary>
    public const int BaseGeneration = int.MaxValue;

    private readonly BlockFrontend _frontend;
    private readonly int _workers;
    private readonly bool _discard;
    private readonly int _initialGeneration;

    /// <param name="overGoldenBase">The disk is an overlay over a base filled by <see cref="FillBlock"/>
    /// with <see cref="BaseGeneration"/>: blocks never written must read as the base, discarded ones as zeros.</param>
    public GuestWorkload(BlockFrontend frontend, int workers, bool overGoldenBase)
    {
        _frontend = frontend;
        _workers = workers;
        _discard = frontend.NegotiatedFrontendFeatures.Discard;
        _initialGeneration = overGoldenBase ? BaseGeneration : 0;
    }

    public async Task<GuestWorkloadResult> RunAsync(TimeSpan duration, int seed, CancellationToken cancellationToken)
    {
        long blocks = (long)(_frontend.Sectors / SectorsPerBlock);
        long blocksPerWorker = blocks / _workers;
        if (blocksPerWorker < MaxBlocksPerRequest)
        {
            throw new InvalidOperationException($"disk of {blocks} blocks is too small for {_workers} workers");
        }

        var results = new WorkerResult[_workers];
        var deadline = Stopwatch.GetTimestamp() + (long)(duration.TotalSeconds * Stopwatch.Frequency);
        var started = Stopwatch.GetTimestamp();
        var tasks = new Task[_workers];
        for (int i = 0; i < _workers; i++)
        {
            int worker = i;
            results[worker] = new WorkerResult();
            tasks[worker] = Task.Run(() => RunWorkerAsync(worker * blocksPerWorker, blocksPerWorker, deadline, seed + worker, results[worker], cancellationToken), cancellationToken);
        }

        await Task.WhenAll(tasks).ConfigureAwait(false);
        var elapsed = Stopwatch.GetElapsedTime(started);
        return GuestWorkloadResult.Combine(results, elapsed);
    }

    private async Task RunWorkerAsync(long firstBlock, long blockCount, long deadline, int seed, WorkerResult result, CancellationToken cancellationToken)
    {
        var random = new Random(seed);
        var generations = new int[blockCount]; // 0: zeros (discarded, or never written on a blank disk)
        Array.Fill(generations, _initialGeneration);
        var buffer = new byte[MaxBlocksPerRequest * BlockSize];
        int nextGeneration = 1;

        while (Stopwatch.GetTimestamp() < deadline && !cancellationToken.IsCancellationRequested)
        {
            int roll = random.Next(100);
            long start = random.NextInt64(blockCount - MaxBlocksPerRequest);
            int count = 1 + random.Next(random.Next(4) == 0 ? MaxBlocksPerRequest : 8);
            long sector = (firstBlock + start) * SectorsPerBlock;
            long t0 = Stopwatch.GetTimestamp();
            short status;
            if (roll < 40)
            {
                int generation = nextGeneration++;
                for (int b = 0; b < count; b++)
                {
                    FillBlock(buffer.AsSpan(b * BlockSize, BlockSize), firstBlock + start + b, generation);
                }

                status = await _frontend.WriteAsync(sector, buffer.AsMemory(0, count * BlockSize)).ConfigureAwait(false);
                result.Record(DemoOperation.Write, t0, status, count * BlockSize);
                if (status == BlkifStatus.Okay)
                {
                    Array.Fill(generations, generation, (int)start, count);
                }
            }
            else if (roll < 85)
            {
                status = await _frontend.ReadAsync(sector, buffer.AsMemory(0, count * BlockSize)).ConfigureAwait(false);
                result.Record(DemoOperation.Read, t0, status, count * BlockSize);
                if (status == BlkifStatus.Okay)
                {
                    for (int b = 0; b < count; b++)
                    {
                        if (!BlockMatches(buffer.AsSpan(b * BlockSize, BlockSize), firstBlock + start + b, generations[start + b]))
                        {
                            result.Mismatches++;
                        }
                    }

                    result.BytesVerified += count * BlockSize;
                }
            }
            else if (roll < 93 || !_discard)
            {
                status = await _frontend.FlushAsync().ConfigureAwait(false);
                result.Record(DemoOperation.Flush, t0, status, 0);
            }
            else
            {
                status = await _frontend.DiscardAsync(sector, (long)count * SectorsPerBlock).ConfigureAwait(false);
                result.Record(DemoOperation.Discard, t0, status, count * BlockSize);
                if (status == BlkifStatus.Okay)
                {
                    Array.Fill(generations, 0, (int)start, count);
                }
            }
        }
    }

    /// <summary>The content of block <paramref name="block"/> at <paramref name="generation"/>: zeros for 0,
    /// otherwise words derived from both, so a block from the wrong place or the wrong time never matches.</summary>
    public static void FillBlock(Span<byte> block, long blockNumber, int generation)
    {
        var words = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(block);
        ulong seed = ((ulong)blockNumber * 0x9E3779B97F4A7C15UL) ^ ((ulong)generation << 32) ^ 0xD1B54A32D192ED03UL;
        for (int i = 0; i < words.Length; i++)
        {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            words[i] = seed;
        }
    }

    private static bool BlockMatches(ReadOnlySpan<byte> actual, long blockNumber, int generation)
    {
        if (generation == 0)
        {
            return !actual.ContainsAnyExcept((byte)0);
        }

        Span<byte> expected = stackalloc byte[BlockSize];
        FillBlock(expected, blockNumber, generation);
        return actual.SequenceEqual(expected);
    }
}

internal enum DemoOperation
{
    Read,
    Write,
    Flush,
    Discard,
}

/// <summary>One worker's tallies; only that worker writes them.</summary>
internal sealed class WorkerResult
{
    public readonly List<double>[] LatenciesMicroseconds = [[], [], [], []];
    public readonly long[] Requests = new long[4];
    public readonly long[] Bytes = new long[4];
    public long Errors;
    public long Mismatches;
    public long BytesVerified;

    public void Record(DemoOperation operation, long startTimestamp, short status, long bytes)
    {
        LatenciesMicroseconds[(int)operation].Add(Stopwatch.GetElapsedTime(startTimestamp).TotalMicroseconds);
        Requests[(int)operation]++;
        if (status == BlkifStatus.Okay)
        {
            Bytes[(int)operation] += bytes;
        }
        else
        {
            Errors++;
        }
    }
}

internal sealed record OperationSummary(string Operation, long Requests, long Bytes, double P50Us, double P90Us, double P99Us, double P999Us, double MaxUs);

internal sealed record GuestWorkloadResult(
    double Seconds,
    long Requests,
    long Errors,
    long Mismatches,
    long BytesVerified,
    double ReadMiBps,
    double WriteMiBps,
    double Iops,
    IReadOnlyList<OperationSummary> Operations)
{
    public static GuestWorkloadResult Combine(IReadOnlyList<WorkerResult> workers, TimeSpan elapsed)
    {
        var operations = new List<OperationSummary>();
        long requests = 0;
        foreach (DemoOperation op in Enum.GetValues<DemoOperation>())
        {
            var latencies = workers.SelectMany(w => w.LatenciesMicroseconds[(int)op]).ToArray();
            Array.Sort(latencies);
            long count = workers.Sum(w => w.Requests[(int)op]);
            requests += count;
            operations.Add(new OperationSummary(
                op.ToString().ToLowerInvariant(), count, workers.Sum(w => w.Bytes[(int)op]),
                Percentile(latencies, 0.50), Percentile(latencies, 0.90), Percentile(latencies, 0.99), Percentile(latencies, 0.999),
                latencies.Length == 0 ? 0 : latencies[^1]));
        }

        double seconds = elapsed.TotalSeconds;
        const double MiB = 1024 * 1024;
        return new GuestWorkloadResult(
            seconds, requests, workers.Sum(w => w.Errors), workers.Sum(w => w.Mismatches), workers.Sum(w => w.BytesVerified),
            workers.Sum(w => w.Bytes[(int)DemoOperation.Read]) / MiB / seconds,
            workers.Sum(w => w.Bytes[(int)DemoOperation.Write]) / MiB / seconds,
            requests / seconds, operations);
    }

    private static double Percentile(double[] sorted, double q) =>
        sorted.Length == 0 ? 0 : sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(q * sorted.Length) - 1)];
}
