using System.Diagnostics.Metrics;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using XenDisk.Telemetry.Prometheus;

namespace XenDisk.Telemetry.Tests;

public sealed class PrometheusExpositionTests
{
    [Theory]
    [InlineData("xendisk.request.count", "{request}", true, "xendisk_request_count_total")]
    [InlineData("xendisk.io.bytes", "By", true, "xendisk_io_bytes_total")]
    [InlineData("xendisk.request.time", "s", true, "xendisk_request_time_seconds_total")]
    [InlineData("xendisk.request.duration", "s", false, "xendisk_request_duration_seconds")]
    [InlineData("xendisk.requests.in_flight", "{request}", false, "xendisk_requests_in_flight")]
    [InlineData("xendisk.cow.hydration.progress", "1", false, "xendisk_cow_hydration_progress_ratio")]
    [InlineData("xendisk.cow.overlay.allocated", "By", false, "xendisk_cow_overlay_allocated_bytes")]
    [InlineData("my-odd.name/x", null, false, "my_odd_name_x")]
    [InlineData("9lives", "", false, "_9lives")]
    [InlineData("already_total", "", true, "already_total")]
    public void Metric_names_follow_the_OpenTelemetry_Prometheus_rules(string instrument, string? unit, bool counter, string expected)
    {
        Assert.Equal(expected, PrometheusTextWriter.MetricName(instrument, unit, counter));
    }

    [Theory]
    [InlineData("xendisk.device", "xendisk_device")]
    [InlineData("error.type", "error_type")]
    [InlineData("__reserved", "key__reserved")]
    [InlineData("1st", "_1st")]
    public void Label_names_are_sanitised(string key, string expected)
    {
        Assert.Equal(expected, PrometheusTextWriter.LabelName(key));
    }

    [Theory]
    [InlineData("/local/domain/0/backend/vbd/1/51712", "/local/domain/0/backend/vbd/1/51712")]
    [InlineData("a\"b", "a\\\"b")]
    [InlineData("back\\slash", "back\\\\slash")]
    [InlineData("two\nlines", "two\\nlines")]
    [InlineData("\\\"\n", "\\\\\\\"\\n")]
    public void Label_values_escape_backslash_quote_and_newline(string value, string expected)
    {
        Assert.Equal(expected, PrometheusTextWriter.EscapeLabelValue(value));
    }

    [Theory]
    [InlineData(double.PositiveInfinity, "+Inf")]
    [InlineData(double.NegativeInfinity, "-Inf")]
    [InlineData(double.NaN, "NaN")]
    [InlineData(1.024e-6, "1.024E-06")]
    [InlineData(0.25, "0.25")]
    [InlineData(42d, "42")]
    public void Values_are_written_as_Go_parses_them(double value, string expected)
    {
        Assert.Equal(expected, PrometheusTextWriter.FormatDouble(value));
    }

    [Fact]
    public void A_bucket_histogram_is_written_cumulatively_with_inf_sum_and_count()
    {
        var writer = new PrometheusTextWriter();
        writer.WriteBucketHistogram(new BucketHistogramFamily("test.latency", "s", "Latency\nwith a newline and a \\",
            [0.001, 0.01],
            [
                new BucketHistogramSeries([new("xendisk.device", "dev\"1")], [2, 5], 7, 0.5),
                new BucketHistogramSeries([new("xendisk.device", "dev2")], [0, 0], 0, null),
            ]));

        Assert.Equal(
            "# HELP test_latency_seconds Latency\\nwith a newline and a \\\\\n" +
            "# TYPE test_latency_seconds histogram\n" +
            "test_latency_seconds_bucket{xendisk_device=\"dev\\\"1\",le=\"0.001\"} 2\n" +
            "test_latency_seconds_bucket{xendisk_device=\"dev\\\"1\",le=\"0.01\"} 5\n" +
            "test_latency_seconds_bucket{xendisk_device=\"dev\\\"1\",le=\"+Inf\"} 7\n" +
            "test_latency_seconds_sum{xendisk_device=\"dev\\\"1\"} 0.5\n" +
            "test_latency_seconds_count{xendisk_device=\"dev\\\"1\"} 7\n" +
            "test_latency_seconds_bucket{xendisk_device=\"dev2\",le=\"0.001\"} 0\n" +
            "test_latency_seconds_bucket{xendisk_device=\"dev2\",le=\"0.01\"} 0\n" +
            "test_latency_seconds_bucket{xendisk_device=\"dev2\",le=\"+Inf\"} 0\n" +
            "test_latency_seconds_count{xendisk_device=\"dev2\"} 0\n",
            writer.ToString());
    }

    [Fact]
    public void A_series_whose_counts_do_not_match_the_bounds_is_refused()
    {
        var writer = new PrometheusTextWriter();
        Assert.Throws<ArgumentException>(() => writer.WriteBucketHistogram(
            new BucketHistogramFamily("x", "", "x", [1, 2], [new BucketHistogramSeries([], [1], 1, null)])));
    }

    [Fact]
    public void OpenTelemetry_instruments_are_exposed_with_their_types_labels_and_values()
    {
        string meterName = "xendisk.test." + Guid.NewGuid().ToString("N");
        using var meter = new Meter(meterName);
        Counter<long> counter = meter.CreateCounter<long>("test.requests", "{request}", "Requests");
        Histogram<double> histogram = meter.CreateHistogram<double>("test.duration", "s", "Durations");
        long gaugeValue = 17;
        meter.CreateObservableGauge("test.depth", () => gaugeValue, "{request}", "Depth");
        meter.CreateObservableUpDownCounter("test.balance", () => -3L, "", "Balance");

        using var exposition = new PrometheusExposition(null);
        using MeterProvider provider = Sdk.CreateMeterProviderBuilder()
            .AddMeter(meterName)
            .AddView("test.duration", new ExplicitBucketHistogramConfiguration { Boundaries = [0.001, 0.01, 0.1] })
            .AddReader(exposition.Reader)
            .Build()!;

        counter.Add(5, new KeyValuePair<string, object?>("xendisk.operation", "read"), new KeyValuePair<string, object?>("odd", "q\"uo\\te\nline"));
        counter.Add(2, new KeyValuePair<string, object?>("xendisk.operation", "write"), new KeyValuePair<string, object?>("odd", "plain"));
        histogram.Record(0.0005);
        histogram.Record(0.005);
        histogram.Record(0.005);
        histogram.Record(5);

        string text = exposition.Scrape();
        List<Sample> samples = PrometheusTextParser.Parse(text);

        Assert.Contains("# TYPE test_requests_total counter\n", text, StringComparison.Ordinal);
        Assert.Contains("# TYPE test_duration_seconds histogram\n", text, StringComparison.Ordinal);
        Assert.Contains("# TYPE test_depth gauge\n", text, StringComparison.Ordinal);
        Assert.Contains("# TYPE test_balance gauge\n", text, StringComparison.Ordinal);

        Sample read = Assert.Single(samples, s => s.Name == "test_requests_total" && s.Labels["xendisk_operation"] == "read");
        Assert.Equal(5, read.Value);
        Assert.Equal("q\"uo\\te\nline", read.Labels["odd"]);
        Assert.Equal(2, Assert.Single(samples, s => s.Name == "test_requests_total" && s.Labels["xendisk_operation"] == "write").Value);
        Assert.Equal(17, Assert.Single(samples, s => s.Name == "test_depth").Value);
        Assert.Equal(-3, Assert.Single(samples, s => s.Name == "test_balance").Value);

        double[] buckets = [.. samples.Where(s => s.Name == "test_duration_seconds_bucket").Select(s => s.Value)];
        Assert.Equal([1, 3, 3, 4], buckets);
        Assert.Equal("+Inf", samples.Last(s => s.Name == "test_duration_seconds_bucket").Labels["le"]);
        Assert.Equal(4, Assert.Single(samples, s => s.Name == "test_duration_seconds_count").Value);
        Assert.Equal(5.0105, Assert.Single(samples, s => s.Name == "test_duration_seconds_sum").Value, 9);

        // A second scrape reports cumulative values, as Prometheus expects.
        counter.Add(1, new KeyValuePair<string, object?>("xendisk.operation", "write"), new KeyValuePair<string, object?>("odd", "plain"));
        List<Sample> again = PrometheusTextParser.Parse(exposition.Scrape());
        Assert.Equal(3, Assert.Single(again, s => s.Name == "test_requests_total" && s.Labels["xendisk_operation"] == "write").Value);
    }

    [Fact]
    public void A_reader_not_attached_to_a_provider_still_serves_the_bucket_histograms()
    {
        using var exposition = new PrometheusExposition(() =>
            [new BucketHistogramFamily("only.buckets", "", "Buckets", [1], [new BucketHistogramSeries([], [3], 4, 9)])]);
        List<Sample> samples = PrometheusTextParser.Parse(exposition.Scrape());
        Assert.Equal(4, samples.Count);
        Assert.Equal(9, Assert.Single(samples, s => s.Name == "only_buckets_sum").Value);
    }
}
