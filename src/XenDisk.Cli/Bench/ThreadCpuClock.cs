using System.Globalization;

namespace XenDisk.Cli.Bench;

/// <summary>
/// CPU time of this process's threads whose kernel name starts with a prefix, read from
/// /proc/self/task/*/schedstat (nanoseconds on CPU) or, where schedstats are off, from the
/// utime+stime clock ticks of /proc/self/task/*/stat. Used to charge the backend's ring threads
/// alone, apart from the test frontend that shares the process.
/// </summary>
internal static class ThreadCpuClock
{
    private const double ClockTicksPerSecond = 100; // USER_HZ on Linux

    public static TimeSpan ThreadsNamed(string prefix)
    {
        double seconds = 0;
        foreach (string task in Directory.EnumerateDirectories("/proc/self/task"))
        {
            string comm;
            try
            {
                comm = File.ReadAllText(Path.Combine(task, "comm")).TrimEnd('\n');
            }
            catch (IOException)
            {
                continue; // the thread ended while we looked
            }

            if (!comm.StartsWith(prefix, StringComparison.Ordinal))
            {
                continue;
            }

            seconds += ReadSeconds(task);
        }

        return TimeSpan.FromSeconds(seconds);
    }

    /// <summary>One thread's CPU time so far, in seconds, from its /proc task directory (0 once it has ended).</summary>
    public static double TaskSeconds(string task) => ReadSeconds(task);

    /// <summary>The calling thread's CPU time so far, in nanoseconds (/proc/thread-self/schedstat).</summary>
    public static long CurrentThreadNanoseconds() => (long)(ReadSeconds("/proc/thread-self") * 1e9);

    private static double ReadSeconds(string task)
    {
        try
        {
            string schedstat = File.ReadAllText(Path.Combine(task, "schedstat"));
            int space = schedstat.IndexOf(' ', StringComparison.Ordinal);
            if (space > 0 && long.TryParse(schedstat.AsSpan(0, space), NumberStyles.None, CultureInfo.InvariantCulture, out long ns) && ns > 0)
            {
                return ns / 1e9;
            }

            // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
            string stat = File.ReadAllText(Path.Combine(task, "stat"));
            string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return (long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture)) / ClockTicksPerSecond;
        }
        catch (IOException)
        {
            return 0;
        }
    }
}
