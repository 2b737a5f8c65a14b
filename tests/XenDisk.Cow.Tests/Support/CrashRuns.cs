using System.Globalization;

namespace XenDisk.Cow.Tests.Support;

/// <summary>
/// How big the crash-safety runs are. Each format runs <see cref="WorkloadsPerPolicy"/> seeded random
/// workloads per metadata policy (seeds 0 .. n-1, so a failure names a seed that reproduces alone).
/// The default keeps the whole suite within a few minutes on two cores; a soak run sets
/// <c>XENDISK_CRASH_WORKLOADS</c>, for example
/// <c>XENDISK_CRASH_WORKLOADS=2000 dotnet test tests/XenDisk.Cow.Tests --filter "FullyQualifiedName~CrashSafety"</c>.
/// </summary>
public static class CrashRuns
{
    public const string WorkloadsVariable = "XENDISK_CRASH_WORKLOADS";

    /// <summary>Per format and policy when the variable is not set: about half a minute of crash checks in all.</summary>
    public const int DefaultWorkloadsPerPolicy = 40;

    /// <summary>
    /// qemu-img check costs a process start (~15 ms), far more than our own checker, so it runs on
    /// a deterministic sample once a run is large: every <see cref="QemuSampleInterval"/>-th crash
    /// image of a test case (counting across its workloads, in order) plus, always, the last prefix
    /// of every workload (the whole log: the image after a clean close). Runs of at most
    /// <see cref="SmallRun"/> workloads per policy (reproducing a seed) check every crash image.
    /// Our own checker runs on every crash image regardless.
    /// </summary>
    public const int QemuSampleInterval = 25;

    public const int SmallRun = 10;

    /// <summary>Crash images checked per workload (besides the end of its log); thousands of workloads spread them over every kind of step.</summary>
    public const int PointsPerWorkload = 10;

    public static int WorkloadsPerPolicy { get; } = ReadWorkloads();

    /// <summary>The sampling rule above: whether crash image number <paramref name="index"/> of a test case gets qemu-img check.</summary>
    public static bool RunQemuCheck(int index, bool lastPrefixOfWorkload) =>
        lastPrefixOfWorkload || WorkloadsPerPolicy <= SmallRun || index % QemuSampleInterval == 0;

    /// <summary>
    /// Crash positions for one workload, ascending: up to <paramref name="count"/> drawn at random from
    /// the candidates, plus the end of the log. Candidates are every durable point (a completed
    /// guest flush, or a Sync request), just before and just after every device flush (the steps of
    /// a metadata write-back), and one random position between consecutive durable points
    /// (<paramref name="durablePoints"/>, ascending, the last being the end of the log).
    /// </summary>
    public static List<int> ChoosePoints(IReadOnlyList<DeviceOperation> log, IReadOnlyList<int> durablePoints, Random random, int count)
    {
        List<int> candidates = [];
        for (int i = 1; i < durablePoints.Count; i++)
        {
            int start = durablePoints[i - 1];
            int end = durablePoints[i];
            if (end > start)
            {
                candidates.Add(end);
                candidates.Add(start + 1 + random.Next(end - start));
            }
        }
        for (int p = durablePoints[0]; p < log.Count; p++)
        {
            if (log[p].Kind == DeviceOperationKind.Flush)
            {
                candidates.Add(p);
                candidates.Add(p + 1);
            }
        }
        SortedSet<int> points = [log.Count];
        for (int taken = 0; taken < count && candidates.Count > 0; taken++)
        {
            int pick = random.Next(candidates.Count);
            points.Add(candidates[pick]);
            candidates[pick] = candidates[^1];
            candidates.RemoveAt(candidates.Count - 1);
        }
        return [.. points];
    }

    /// <summary>
    /// Segment boundaries for a log with no durable points (a transient overlay: nothing is ever
    /// durable), so that <see cref="ChoosePoints"/> draws crash positions from every quarter of it.
    /// </summary>
    public static int[] Quarters(int start, int end) => [start, start + (end - start) / 4, start + (end - start) / 2, start + 3 * (end - start) / 4, end];

    private static int ReadWorkloads()
    {
        string? text = Environment.GetEnvironmentVariable(WorkloadsVariable);
        if (string.IsNullOrWhiteSpace(text))
        {
            return DefaultWorkloadsPerPolicy;
        }
        if (!int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int count) || count < 1)
        {
            throw new InvalidOperationException($"{WorkloadsVariable}={text} is not a positive number of workloads per format and policy.");
        }
        return count;
    }
}
