using XenDisk.Abi;
using XenDisk.TestFrontend;

namespace XenDisk.Cli.Demo;

/// <summary>
/// The demo's verifying mixed workload for one guest: <see cref="FrontendLoadGenerator"/>'s verifying
/// mode on every queue, the workers shared out among the queues, each owning a disjoint region of
/// the disk and a model of what it must hold: 40% writes, 45% reads checked byte for byte against
/// the model, 8% flushes and 7% discards (flushes when the backend offers no discard), of mostly
/// small requests and now and then up to 256 KiB, large enough to need indirect segments.
/// </summary>
internal sealed class GuestWorkload
{
    /// <summary>The unit the model tracks: one generation number per 4 KiB block.</summary>
    public const int BlockSize = XenPage.Size;
    private const int SectorsPerBlock = BlockSize / BlkifLimits.SectorSize;

    /// <summary>Largest request, in blocks: 256 KiB.</summary>
    private const int MaxBlocksPerRequest = 64;

    /// <summary>Most requests: up to 32 KiB.</summary>
    private const int SmallBlocksPerRequest = 8;

    /// <summary>The generation of every block of the shared golden base image.</summary>
    public const int BaseGeneration = int.MaxValue;

    private readonly BlockFrontend _frontend;
    private readonly int _workers;
    private readonly bool _overGoldenBase;

    /// <param name="overGoldenBase">The disk is an overlay over a base filled by <see cref="FillBlock"/>
    /// with <see cref="BaseGeneration"/>: blocks never written must read as the base, discarded ones as zeros.</param>
    public GuestWorkload(BlockFrontend frontend, int workers, bool overGoldenBase)
    {
        _frontend = frontend;
        _workers = workers;
        _overGoldenBase = overGoldenBase;
    }

    public async Task<GuestWorkloadResult> RunAsync(TimeSpan duration, int seed, CancellationToken cancellationToken)
    {
        int queues = Math.Min(_frontend.QueueCount, _workers);
        long share = (long)_frontend.Sectors / queues;
        bool discard = _frontend.NegotiatedFrontendFeatures.Discard;
        var generators = new List<FrontendLoadGenerator>();
        try
        {
            for (int q = 0; q < queues; q++)
            {
                int workers = (_workers / queues) + (q < _workers % queues ? 1 : 0);
                if (share / SectorsPerBlock / workers < MaxBlocksPerRequest)
                {
                    throw new InvalidOperationException($"disk of {_frontend.Sectors / SectorsPerBlock} blocks is too small for {_workers} workers");
                }

                generators.Add(new FrontendLoadGenerator(_frontend, new LoadGeneratorOptions
                {
                    Queue = q,
                    Depth = workers,
                    FirstSector = q * share,
                    SectorCount = share,
                    Seed = (ulong)seed + (ulong)q,
                    ReadPercent = 45,
                    WritePercent = 40,
                    FlushPercent = discard ? 8 : 15,
                    DiscardPercent = discard ? 7 : 0,
                    PagesPerRequest = Math.Min(MaxBlocksPerRequest, _frontend.NegotiatedFrontendFeatures.MaxSegmentsPerRequest),
                    VariableRequestSize = true,
                    SmallPagesPerRequest = SmallBlocksPerRequest,
                    InitialGeneration = _overGoldenBase ? (uint)BaseGeneration : 0,
                }));
            }

            LoadGeneratorResult[] results = await Task.WhenAll(generators.Select(g => g.RunVerifyingAsync(duration, cancellationToken))).ConfigureAwait(false);
            return GuestWorkloadResult.Combine(results);
        }
        finally
        {
            foreach (FrontendLoadGenerator generator in generators)
            {
                generator.Dispose();
            }
        }
    }

    /// <summary>The content of block <paramref name="blockNumber"/> at <paramref name="generation"/> (not 0):
    /// the verifying workload's pattern for the block's first sector.</summary>
    public static void FillBlock(Span<byte> block, long blockNumber, int generation) =>
        FrontendLoadGenerator.FillPattern(block, blockNumber * SectorsPerBlock, (uint)generation);
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
    public static GuestWorkloadResult Combine(IReadOnlyList<LoadGeneratorResult> queues)
    {
        const double MiB = 1024 * 1024;
        double seconds = queues.Max(q => q.Elapsed).TotalSeconds;
        long requests = queues.Sum(q => q.Completions);
        OperationSummary[] operations =
        [
            Summarize("read", queues.Select(q => q.ReadLatency), queues.Sum(q => q.BytesRead)),
            Summarize("write", queues.Select(q => q.WriteLatency), queues.Sum(q => q.BytesWritten)),
            Summarize("flush", queues.Select(q => q.FlushLatency), 0),
            Summarize("discard", queues.Select(q => q.DiscardLatency), queues.Sum(q => q.BytesDiscarded)),
        ];
        return new GuestWorkloadResult(
            seconds, requests, queues.Sum(q => q.Errors + q.SubmitFailures), queues.Sum(q => q.Mismatches), queues.Sum(q => q.BytesVerified),
            queues.Sum(q => q.BytesRead) / MiB / seconds, queues.Sum(q => q.BytesWritten) / MiB / seconds, requests / seconds, operations);
    }

    /// <summary>Percentiles are the upper bounds of power-of-two latency buckets, capped at the exact maximum.</summary>
    private static OperationSummary Summarize(string operation, IEnumerable<LatencyHistogram> queues, long bytes)
    {
        var latency = new LatencyHistogram();
        foreach (LatencyHistogram queue in queues)
        {
            latency.Add(queue);
        }

        double max = latency.Max.TotalMicroseconds;
        double Percentile(double percentile) => Math.Min(latency.Percentile(percentile).TotalMicroseconds, max);
        return new OperationSummary(operation, latency.TotalCount, bytes, Percentile(50), Percentile(90), Percentile(99), Percentile(99.9), max);
    }
}
