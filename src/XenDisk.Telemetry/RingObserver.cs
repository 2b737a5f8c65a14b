using System.Diagnostics;
using System.Diagnostics.Metrics;
using XenDisk.Backend.DataPlane;
using static XenDisk.Telemetry.XenDiskMetricNames;

namespace XenDisk.Telemetry;

/// <summary>
/// Records one ring's requests and batches into the histograms, on the ring thread. The tag lists are
/// built once here, so a request costs one <see cref="Histogram{T}.Record(T, in TagList)"/> and no
/// allocation. Several rings of a device record into the same device/operation series, which thus
/// sums over the device's queues and carries on across reconnects.
/// </summary>
internal sealed class RingObserver : IRingStatisticsObserver
{
    private const double NanosecondsPerSecond = 1e9;

    private readonly Histogram<double> _durations;
    private readonly Histogram<double> _batchSizes;
    private readonly TagList[] _operationTags = new TagList[RingStatistics.OperationCount];
    private readonly TagList _queueTags;

    public RingObserver(Histogram<double> durations, Histogram<double> batchSizes, string device, int queue)
    {
        _durations = durations;
        _batchSizes = batchSizes;
        for (int op = 0; op < _operationTags.Length; op++)
        {
            _operationTags[op] = new TagList { { DeviceAttribute, device }, { OperationAttribute, Values.Operations[op] } };
        }

        _queueTags = new TagList { { DeviceAttribute, device }, { QueueAttribute, queue } };
    }

    /// <summary>
    /// Replays what the ring counted before it adopted this observer, one recording per request or
    /// batch at the middle of the data plane's bucket it fell in. The bucket bounds of both histograms
    /// are bounds of the data plane's buckets, so every replayed count lands in its true bucket; only
    /// the sum is approximate (by at most half a bucket per replayed request). Telemetry offers the
    /// observer within a fraction of a second of a ring connecting, so there is little to replay.
    /// </summary>
    public void Attached(RingStatistics statistics)
    {
        for (int op = 0; op < RingStatistics.OperationCount; op++)
        {
            LatencyHistogram latency = statistics.Latency((RingOperation)op);
            for (int bucket = 0; bucket < LatencyHistogram.BucketCount; bucket++)
            {
                long count = latency.BucketCountAt(bucket);
                if (count == 0)
                {
                    continue;
                }

                double seconds = LatencyBucketMiddle(bucket) / NanosecondsPerSecond;
                for (long i = 0; i < count; i++)
                {
                    _durations.Record(seconds, in _operationTags[op]);
                }
            }
        }

        for (int bucket = 0; bucket < RingStatistics.BatchSizeBucketCount; bucket++)
        {
            long count = statistics.BatchSizeCount(bucket);
            // The bucket's largest size (its smallest for the open-ended last bucket) stays inside it.
            double size = bucket == RingStatistics.BatchSizeBucketCount - 1
                ? RingStatistics.BatchSizeBucketUpperBound(bucket - 1) + 1
                : RingStatistics.BatchSizeBucketUpperBound(bucket);
            for (long i = 0; i < count; i++)
            {
                _batchSizes.Record(size, in _queueTags);
            }
        }
    }

    public void RequestCompleted(RingOperation operation, bool succeeded, long nanoseconds) =>
        _durations.Record(nanoseconds / NanosecondsPerSecond, in _operationTags[(int)operation]);

    public void BatchTaken(int size) => _batchSizes.Record(size, in _queueTags);

    /// <summary>A duration strictly inside the data plane's bucket (its lower bound for the open-ended last one).</summary>
    private static double LatencyBucketMiddle(int bucket)
    {
        double lower = bucket == 0 ? 0 : LatencyHistogram.UpperBoundNanoseconds(bucket - 1);
        return bucket == LatencyHistogram.BucketCount - 1 ? lower : (lower + LatencyHistogram.UpperBoundNanoseconds(bucket)) / 2;
    }
}
