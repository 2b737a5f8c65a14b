using System.Text.Json;
using XenDisk.Cli.Tests.Support;

namespace XenDisk.Cli.Tests;

/// <summary>The benchmark's shape only: it runs every configuration and reports IOPS and ratios; speed is never asserted.</summary>
[Trait(Needs.Key, Needs.Qemu)]
public sealed class BenchCowTests
{
    [Fact]
    public void Tiny_run_reports_every_configuration_with_ratios()
    {
        QemuTools.Find("qemu-img");

        CliResult result = Xendisk.Run("bench", "cow", "--size", "64M", "--seconds", "1", "--json");

        Assert.True(result.ExitCode == 0, result.ToString());
        using JsonDocument json = JsonDocument.Parse(result.Output);
        JsonElement root = json.RootElement;
        Assert.Equal(64L << 20, root.GetProperty("sizeBytes").GetInt64());
        string[] phases = root.GetProperty("phases").EnumerateArray().Select(p => p.GetString()!).ToArray();
        Assert.Equal(["first-write-4k", "rewrite-4k", "read-base-4k", "seq-write-64k"], phases);
        JsonElement[] configurations = root.GetProperty("configurations").EnumerateArray().ToArray();
        Assert.Contains(configurations, c => c.GetProperty("engine").GetString() == "qemu" && c.GetProperty("format").GetString() == "qcow2");
        Assert.Contains(configurations, c => c.GetProperty("engine").GetString() == "xendisk" && c.GetProperty("format").GetString() == "bitmap");
        foreach (string policy in new[] { "flush", "sync", "lazy", "transient" })
        {
            Assert.Contains(configurations, c => c.GetProperty("engine").GetString() == "xendisk" && c.GetProperty("format").GetString() == "qcow2"
                && c.GetProperty("policy").GetString() == policy);
        }
        Assert.Contains(configurations, c => c.GetProperty("engine").GetString() == "qemu" && c.GetProperty("format").GetString() == "raw");
        Assert.Contains(configurations, c => c.GetProperty("engine").GetString() == "xendisk" && c.GetProperty("format").GetString() == "raw");
        long requests = root.GetProperty("requests").GetInt64();
        foreach (JsonElement configuration in configurations)
        {
            JsonElement[] runs = configuration.GetProperty("runs").EnumerateArray().ToArray();
            Assert.Equal(phases, runs.Select(r => r.GetProperty("phase").GetString()!).ToArray());
            foreach (JsonElement run in runs)
            {
                Assert.Equal(requests, run.GetProperty("requests").GetInt64());
                Assert.True(run.GetProperty("iops").GetDouble() > 0, configuration.ToString());
                Assert.Equal(0, run.GetProperty("errors").GetInt64());
                if (configuration.GetProperty("engine").GetString() == "xendisk" && configuration.GetProperty("format").GetString() != "raw")
                {
                    Assert.True(run.GetProperty("vsQemuBest").GetDouble() > 0);
                    Assert.True(run.GetProperty("vsRaw").GetDouble() > 0);
                }
            }
        }
        Assert.Contains("bench cow:", result.Error);
    }

    [Fact]
    public void Only_and_rounds_choose_the_configurations_and_repeat_them()
    {
        QemuTools.Find("qemu-img");

        CliResult result = Xendisk.Run("bench", "cow", "--size", "16M", "--seconds", "0.2", "--only", "xendisk bitmap", "--only", "xendisk raw", "--rounds", "2", "--json");

        Assert.True(result.ExitCode == 0, result.ToString());
        using JsonDocument json = JsonDocument.Parse(result.Output);
        Assert.Equal(2, json.RootElement.GetProperty("rounds").GetInt32());
        string[] names = json.RootElement.GetProperty("configurations").EnumerateArray().Select(c => c.GetProperty("name").GetString()!).ToArray();
        Assert.Equal(["xendisk bitmap flush", "xendisk bitmap flush falloc-file", "xendisk raw"], names);
        Assert.Contains("round 2 of 2", result.Error);
        string[] lines = result.Error.Split('\n');
        Assert.Equal(2, lines.Count(line => line.StartsWith("bench cow: xendisk raw, first-write-4k:", StringComparison.Ordinal)));
        Assert.DoesNotContain(lines, line => line.StartsWith("bench cow: qemu", StringComparison.Ordinal));
    }
}
