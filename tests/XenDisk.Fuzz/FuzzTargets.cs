using XenDisk.Fuzz.Targets;

namespace XenDisk.Fuzz;

/// <summary>Every target, by name.</summary>
public static class FuzzTargets
{
    public static IReadOnlyList<FuzzTarget> All { get; } =
    [
        new Qcow2OpenTarget(),
        new BitmapHeaderTarget(),
        new BlkifRequestTarget(),
        new CowTargetParserTarget(),
    ];

    public static FuzzTarget? Find(string name) => All.FirstOrDefault(t => t.Name == name);

    /// <summary>The seed corpus in the repository (Corpus/ beside this project, copied next to the build output).</summary>
    public static string CorpusDirectory(FuzzTarget target) => Path.Combine(AppContext.BaseDirectory, "Corpus", target.Name);
}
