namespace XenDisk.Fuzz.Tests;

/// <summary>
/// Every file of the corpus through its target, as afl-fuzz would run it but in-process: a seed or a
/// regression that throws anything but the documented refusal, or breaks a target's invariant, fails
/// here. The seeds must also reach past the refusal: images qemu-img made open, valid requests and
/// targets parse, so that a harness that refuses everything cannot pass for one that fuzzes.
/// </summary>
public class CorpusReplayTests
{
    /// <summary>Seeds made to be refused (the rest must be accepted).</summary>
    private static readonly HashSet<string> RefusedSeeds =
    [
        "qcow2/seed-c1k-data-file.qcow2", // external data files are refused
        "blkif/seed-write-read-only.bin",
        "blkif/seed-unknown-operation.bin",
        "blkif/seed-out-of-range.bin",
        "cow-target/seed-09", // a relative overlay path
    ];

    public static TheoryData<string, string> CorpusFiles()
    {
        TheoryData<string, string> files = [];
        foreach (FuzzTarget target in FuzzTargets.All)
        {
            foreach (string file in Directory.GetFiles(FuzzTargets.CorpusDirectory(target)).Order(StringComparer.Ordinal))
            {
                files.Add(target.Name, Path.GetFileName(file));
            }
        }
        return files;
    }

    [Theory]
    [MemberData(nameof(CorpusFiles))]
    public void Corpus_file_runs_through_its_target(string targetName, string fileName)
    {
        FuzzTarget target = FuzzTargets.Find(targetName)!;
        byte[] input = File.ReadAllBytes(Path.Combine(FuzzTargets.CorpusDirectory(target), fileName));

        FuzzOutcome outcome = target.Run(input);

        if (fileName.StartsWith("seed-", StringComparison.Ordinal))
        {
            FuzzOutcome expected = RefusedSeeds.Contains($"{targetName}/{fileName}") ? FuzzOutcome.Refused : FuzzOutcome.Accepted;
            Assert.Equal(expected, outcome);
        }
    }

    [Fact]
    public void Every_target_has_seeds()
    {
        foreach (FuzzTarget target in FuzzTargets.All)
        {
            Assert.True(Directory.GetFiles(FuzzTargets.CorpusDirectory(target), "seed-*").Length >= 3, $"{target.Name} has fewer than 3 seeds");
        }
    }
}
