using SharpFuzz;

namespace XenDisk.Fuzz;

/// <summary>
/// <c>XenDisk.Fuzz TARGET</c> runs under afl-fuzz (tools/fuzz instruments the engine and starts it);
/// <c>XenDisk.Fuzz replay TARGET [PATH...]</c> runs files, or every file of folders, through TARGET
/// without afl (no PATH: the target's seed corpus) and exits 1 on any finding.
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length == 1 && FuzzTargets.Find(args[0]) is FuzzTarget aflTarget)
        {
            // SharpFuzz speaks afl's fork-server protocol and reports an escaping exception as a crash.
            Fuzzer.Run(stream =>
            {
                using MemoryStream copy = new();
                stream.CopyTo(copy);
                aflTarget.Run(copy.GetBuffer().AsSpan(0, (int)copy.Length));
            });
            return 0;
        }
        if (args.Length >= 2 && args[0] == "replay" && FuzzTargets.Find(args[1]) is FuzzTarget target)
        {
            return Replay(target, args.Length > 2 ? args[2..] : [FuzzTargets.CorpusDirectory(target)]);
        }
        Console.Error.WriteLine("usage: XenDisk.Fuzz TARGET | XenDisk.Fuzz replay TARGET [PATH...]");
        foreach (FuzzTarget t in FuzzTargets.All)
        {
            Console.Error.WriteLine($"  {t.Name,-12} {t.Description}");
        }
        return 2;
    }

    private static int Replay(FuzzTarget target, string[] paths)
    {
        int files = 0, findings = 0, accepted = 0;
        foreach (string file in paths.SelectMany(p => Directory.Exists(p) ? Directory.GetFiles(p).Order(StringComparer.Ordinal) : (IEnumerable<string>)[p]))
        {
            files++;
            try
            {
                accepted += target.Run(File.ReadAllBytes(file)) == FuzzOutcome.Accepted ? 1 : 0;
            }
            catch (Exception e)
            {
                findings++;
                Console.WriteLine($"FINDING {target.Name} {file}: {e}");
            }
        }
        Console.WriteLine($"replay {target.Name}: {files} files ({accepted} accepted, the rest refused), {findings} findings");
        return findings == 0 && files > 0 ? 0 : 1;
    }
}
