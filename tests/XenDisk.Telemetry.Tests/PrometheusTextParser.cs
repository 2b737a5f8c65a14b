using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace XenDisk.Telemetry.Tests;

internal sealed record Sample(string Name, IReadOnlyDictionary<string, string> Labels, double Value);

/// <summary>
/// A strict reader of the text format 0.0.4, independent of the writer: checks that every sample
/// belongs to the family announced by the last HELP/TYPE pair, that no family appears twice, and
/// unescapes label values. Fails the test (throws) on anything malformed.
/// </summary>
internal static partial class PrometheusTextParser
{
    public static List<Sample> Parse(string text)
    {
        Assert.EndsWith("\n", text);
        var samples = new List<Sample>();
        var families = new HashSet<string>(StringComparer.Ordinal);
        string? family = null;
        string? type = null;
        string? helpFor = null;
        foreach (string line in text.TrimEnd('\n').Split('\n'))
        {
            if (line.StartsWith("# HELP ", StringComparison.Ordinal))
            {
                helpFor = line.Split(' ')[2];
                continue;
            }

            if (line.StartsWith("# TYPE ", StringComparison.Ordinal))
            {
                string[] parts = line.Split(' ');
                Assert.Equal(4, parts.Length);
                Assert.Equal(helpFor, parts[2]);
                Assert.Contains(parts[3], new[] { "counter", "gauge", "histogram", "summary", "untyped" });
                Assert.True(families.Add(parts[2]), $"family {parts[2]} appears twice");
                family = parts[2];
                type = parts[3];
                continue;
            }

            Match match = SampleLine().Match(line);
            Assert.True(match.Success, $"not a sample line: {line}");
            string name = match.Groups["name"].Value;
            Assert.NotNull(family);
            bool belongs = type == "histogram"
                ? name == family + "_bucket" || name == family + "_sum" || name == family + "_count"
                : name == family;
            Assert.True(belongs, $"sample {name} outside its family {family}");
            var labels = new Dictionary<string, string>(StringComparer.Ordinal);
            if (match.Groups["labels"].Success)
            {
                foreach (Match label in Label().Matches(match.Groups["labels"].Value))
                {
                    Assert.True(labels.TryAdd(label.Groups["key"].Value, Unescape(label.Groups["value"].Value)), "duplicate label");
                }
            }

            samples.Add(new Sample(name, labels, ParseValue(match.Groups["value"].Value)));
        }

        return samples;
    }

    public static double ParseValue(string text) => text switch
    {
        "+Inf" => double.PositiveInfinity,
        "-Inf" => double.NegativeInfinity,
        "NaN" => double.NaN,
        _ => double.Parse(text, NumberStyles.Float, CultureInfo.InvariantCulture),
    };

    private static string Unescape(string value)
    {
        var builder = new StringBuilder(value.Length);
        for (int i = 0; i < value.Length; i++)
        {
            if (value[i] != '\\')
            {
                builder.Append(value[i]);
                continue;
            }

            i++;
            builder.Append(value[i] switch
            {
                'n' => '\n',
                '\\' => '\\',
                '"' => '"',
                _ => throw new FormatException($"bad escape \\{value[i]}"),
            });
        }

        return builder.ToString();
    }

    [GeneratedRegex(@"^(?<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?<labels>([a-zA-Z_][a-zA-Z0-9_]*=""([^""\\\n]|\\[\\""n])*"",?)*)\})? (?<value>[^ ]+)$")]
    private static partial Regex SampleLine();

    [GeneratedRegex(@"(?<key>[a-zA-Z_][a-zA-Z0-9_]*)=""(?<value>([^""\\\n]|\\[\\""n])*)""")]
    private static partial Regex Label();
}
