using System.Globalization;
using System.Text;
using OpenTelemetry;
using OpenTelemetry.Metrics;

namespace XenDisk.Telemetry.Prometheus;

/// <summary>
/// Writes the Prometheus text exposition format, version 0.0.4
/// (https://prometheus.io/docs/instrumenting/exposition_formats/): per family one "# HELP" and one
/// "# TYPE" line, then its samples, every sample of a family together; histograms as cumulative
/// _bucket{le="..."} series ending in le="+Inf", then _sum and _count.
///
/// Names follow OpenTelemetry's Prometheus compatibility rules: characters outside [a-zA-Z0-9_:] become
/// "_", the unit is appended ("s" as _seconds, "By" as _bytes, "1" as _ratio; annotations in braces are
/// dropped), and monotonic counters end in _total. Label values are escaped (\\, \", \n); HELP text
/// escapes \\ and \n.
/// </summary>
public sealed class PrometheusTextWriter
{
    /// <summary>The Content-Type of this format.</summary>
    public const string ContentType = "text/plain; version=0.0.4; charset=utf-8";

    private readonly StringBuilder _text = new();
    private readonly HashSet<string> _families = new(StringComparer.Ordinal);

    public override string ToString() => _text.ToString();

    /// <summary>Writes every metric of an OpenTelemetry collection (sums, gauges and explicit-bucket histograms).</summary>
    public void WriteMetrics(in Batch<Metric> metrics)
    {
        foreach (Metric metric in metrics)
        {
            WriteMetric(metric);
        }
    }

    public void WriteMetric(Metric metric)
    {
        ArgumentNullException.ThrowIfNull(metric);
        MetricType type = metric.MetricType;
        bool monotonicSum = type is MetricType.LongSum or MetricType.DoubleSum;
        bool histogram = type == MetricType.Histogram;
        if (type == MetricType.ExponentialHistogram)
        {
            // Not expressible in the 0.0.4 text format; XenDisk configures no exponential histograms.
            return;
        }

        string name = MetricName(metric.Name, metric.Unit, monotonicSum);
        if (!BeginFamily(name, metric.Description, monotonicSum ? "counter" : histogram ? "histogram" : "gauge"))
        {
            return;
        }

        foreach (ref readonly MetricPoint point in metric.GetMetricPoints())
        {
            var labels = new List<KeyValuePair<string, string>>();
            foreach (KeyValuePair<string, object?> tag in point.Tags)
            {
                labels.Add(new(tag.Key, TagValue(tag.Value)));
            }

            if (histogram)
            {
                long cumulative = 0;
                foreach (HistogramBucket bucket in point.GetHistogramBuckets())
                {
                    cumulative += bucket.BucketCount;
                    WriteSample(name + "_bucket", labels, ("le", FormatDouble(bucket.ExplicitBound)), cumulative.ToString(CultureInfo.InvariantCulture));
                }

                WriteSample(name + "_sum", labels, null, FormatDouble(point.GetHistogramSum()));
                WriteSample(name + "_count", labels, null, point.GetHistogramCount().ToString(CultureInfo.InvariantCulture));
                continue;
            }

            string value = type switch
            {
                MetricType.LongSum or MetricType.LongSumNonMonotonic => point.GetSumLong().ToString(CultureInfo.InvariantCulture),
                MetricType.DoubleSum or MetricType.DoubleSumNonMonotonic => FormatDouble(point.GetSumDouble()),
                MetricType.LongGauge => point.GetGaugeLastValueLong().ToString(CultureInfo.InvariantCulture),
                MetricType.DoubleGauge => FormatDouble(point.GetGaugeLastValueDouble()),
                _ => "NaN",
            };
            WriteSample(name, labels, null, value);
        }
    }

    /// <summary>Writes a histogram counted outside OpenTelemetry (see <see cref="BucketHistogramFamily"/>).</summary>
    public void WriteBucketHistogram(BucketHistogramFamily family)
    {
        ArgumentNullException.ThrowIfNull(family);
        string name = MetricName(family.Name, family.Unit, isCounter: false);
        if (!BeginFamily(name, family.Description, "histogram"))
        {
            return;
        }

        string[] bounds = [.. family.Bounds.Select(FormatDouble)];
        foreach (BucketHistogramSeries series in family.Series)
        {
            if (series.CumulativeCounts.Count != bounds.Length)
            {
                throw new ArgumentException($"Series of {family.Name} has {series.CumulativeCounts.Count} counts for {bounds.Length} bounds.", nameof(family));
            }

            for (int i = 0; i < bounds.Length; i++)
            {
                WriteSample(name + "_bucket", series.Attributes, ("le", bounds[i]), series.CumulativeCounts[i].ToString(CultureInfo.InvariantCulture));
            }

            string count = series.Count.ToString(CultureInfo.InvariantCulture);
            WriteSample(name + "_bucket", series.Attributes, ("le", "+Inf"), count);
            if (series.Sum is { } sum)
            {
                WriteSample(name + "_sum", series.Attributes, null, FormatDouble(sum));
            }

            WriteSample(name + "_count", series.Attributes, null, count);
        }
    }

    /// <summary>The Prometheus metric name of an OpenTelemetry instrument.</summary>
    public static string MetricName(string instrumentName, string? unit, bool isCounter)
    {
        string name = Sanitize(instrumentName, allowColon: true);
        string? suffix = UnitSuffix(unit);
        if (suffix is not null && !name.EndsWith("_" + suffix, StringComparison.Ordinal))
        {
            name += "_" + suffix;
        }

        if (isCounter && !name.EndsWith("_total", StringComparison.Ordinal))
        {
            name += "_total";
        }

        return name;
    }

    /// <summary>A label name from an attribute key: [a-zA-Z_][a-zA-Z0-9_]*, and never the reserved "__" prefix.</summary>
    public static string LabelName(string key)
    {
        string name = Sanitize(key, allowColon: false);
        return name.StartsWith("__", StringComparison.Ordinal) ? "key" + name : name;
    }

    /// <summary>Escapes a label value: backslash, double quote and line feed (the format's only escapes).</summary>
    public static string EscapeLabelValue(string value)
    {
        ArgumentNullException.ThrowIfNull(value);
        if (value.AsSpan().IndexOfAny('\\', '"', '\n') < 0)
        {
            return value;
        }

        return value.Replace("\\", "\\\\", StringComparison.Ordinal)
            .Replace("\"", "\\\"", StringComparison.Ordinal)
            .Replace("\n", "\\n", StringComparison.Ordinal);
    }

    /// <summary>Escapes HELP text: backslash and line feed.</summary>
    public static string EscapeHelp(string text) =>
        text.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal);

    /// <summary>A sample value or "le" bound as Go's ParseFloat reads it: +Inf, -Inf, NaN, or the shortest round-trip form.</summary>
    public static string FormatDouble(double value) =>
        double.IsPositiveInfinity(value) ? "+Inf"
        : double.IsNegativeInfinity(value) ? "-Inf"
        : double.IsNaN(value) ? "NaN"
        : value.ToString("R", CultureInfo.InvariantCulture);

    private bool BeginFamily(string name, string? description, string type)
    {
        // Two instruments that map to one name would make a family with two TYPE lines, which
        // Prometheus rejects as a whole scrape: the first one wins.
        if (!_families.Add(name))
        {
            return false;
        }

        _text.Append("# HELP ").Append(name).Append(' ').Append(EscapeHelp(string.IsNullOrEmpty(description) ? name : description)).Append('\n');
        _text.Append("# TYPE ").Append(name).Append(' ').Append(type).Append('\n');
        return true;
    }

    private void WriteSample(string name, IReadOnlyList<KeyValuePair<string, string>> labels, (string Name, string Value)? extra, string value)
    {
        _text.Append(name);
        if (labels.Count > 0 || extra is not null)
        {
            _text.Append('{');
            bool first = true;
            foreach (KeyValuePair<string, string> label in labels)
            {
                AppendLabel(LabelName(label.Key), label.Value, ref first);
            }

            if (extra is { } e)
            {
                AppendLabel(e.Name, e.Value, ref first);
            }

            _text.Append('}');
        }

        _text.Append(' ').Append(value).Append('\n');
    }

    private void AppendLabel(string name, string value, ref bool first)
    {
        if (!first)
        {
            _text.Append(',');
        }

        first = false;
        _text.Append(name).Append("=\"").Append(EscapeLabelValue(value)).Append('"');
    }

    private static string TagValue(object? value) => value switch
    {
        null => "",
        string s => s,
        bool b => b ? "true" : "false",
        double d => FormatDouble(d),
        float f => FormatDouble(f),
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => value.ToString() ?? "",
    };

    private static string? UnitSuffix(string? unit) => unit switch
    {
        null or "" => null,
        "s" => "seconds",
        "ms" => "milliseconds",
        "By" => "bytes",
        "1" => "ratio",
        _ when unit.StartsWith('{') => null,
        _ => Sanitize(unit, allowColon: false).Trim('_') is { Length: > 0 } cleaned ? cleaned : null,
    };

    private static string Sanitize(string text, bool allowColon)
    {
        var builder = new StringBuilder(text.Length + 1);
        foreach (char c in text)
        {
            bool ok = c is (>= 'a' and <= 'z') or (>= 'A' and <= 'Z') or (>= '0' and <= '9') or '_' || (allowColon && c == ':');
            builder.Append(ok ? c : '_');
        }

        if (builder.Length == 0 || char.IsAsciiDigit(builder[0]))
        {
            builder.Insert(0, '_');
        }

        return builder.ToString();
    }
}
