using System.Runtime;

namespace XenDisk.Service.Control;

/// <summary>The process's memory as <see cref="MemoryReport"/> shows it: the kernel's resident figures and the garbage collector's own.</summary>
internal static class ProcessMemory
{
    /// <summary>
    /// Runs a blocking, compacting collection of every generation, the large-object heap included,
    /// then a second one for what finalizers released. Costs tens of milliseconds on a small heap;
    /// only asked for by an operator (`xendisk status --collect`) or a soak run.
    /// </summary>
    public static void Collect()
    {
        GCSettings.LargeObjectHeapCompactionMode = GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
    }

    public static MemoryReport Report(bool collected)
    {
        GCMemoryInfo gc = GC.GetGCMemoryInfo(GCKind.Any);
        (long resident, long anonymous) = ReadStatus();
        return new MemoryReport(resident, anonymous, gc.HeapSizeBytes, gc.FragmentedBytes, gc.TotalCommittedBytes, GC.CollectionCount(2), collected);
    }

    /// <summary>VmRSS and RssAnon (kB in the file) in bytes; zeros where /proc is not Linux's.</summary>
    private static (long Resident, long Anonymous) ReadStatus()
    {
        long resident = 0, anonymous = 0;
        try
        {
            foreach (string line in File.ReadLines("/proc/self/status"))
            {
                if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                {
                    resident = Kibibytes(line);
                }
                else if (line.StartsWith("RssAnon:", StringComparison.Ordinal))
                {
                    anonymous = Kibibytes(line);
                }
            }
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }

        return (resident, anonymous);
    }

    private static long Kibibytes(string line)
    {
        string[] words = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        return words.Length >= 2 && long.TryParse(words[1], out long kib) ? kib * 1024 : 0;
    }
}
