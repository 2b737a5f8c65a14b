namespace XenDisk.Cli.Bench;

/// <summary>
/// The benchmarks' --only: a configuration runs when no text is given or when its name contains one
/// of the texts (case-insensitive). A text that selects no configuration is refused before the run,
/// which would otherwise print an empty table and succeed.
/// </summary>
internal static class ConfigurationFilter
{
    public static bool Selects(IReadOnlyList<string>? only, string name) =>
        only is not { Count: > 0 } || only.Any(text => Matches(name, text));

    /// <summary>The refusal for the first text that selects none of <paramref name="names"/>, naming them; null when each selects one.</summary>
    public static string? Unmatched(IReadOnlyList<string>? only, IReadOnlyList<string> names) =>
        only?.FirstOrDefault(text => !names.Any(name => Matches(name, text))) is { } unmatched
            ? $"--only \"{unmatched}\" matches no configuration (configurations: {string.Join(", ", names)})"
            : null;

    private static bool Matches(string name, string text) => name.Contains(text, StringComparison.OrdinalIgnoreCase);
}
