using XenDisk.Cli.Commands.Image;

namespace XenDisk.Cli.Tests;

public sealed class ProgressBarTests
{
    [Fact]
    public void Short_work_prints_nothing()
    {
        StringWriter error = new();
        ManualClock clock = new();
        using (ProgressBar bar = new(error, "checking", time: clock))
        {
            clock.Ticks = TimeSpan.FromMilliseconds(400).Ticks;
            bar.Report(5, 10);
            bar.Complete();
        }
        Assert.Equal("", error.ToString());
    }

    [Fact]
    public void Long_work_not_on_a_terminal_prints_a_line_per_tenth_and_the_end()
    {
        StringWriter error = new();
        ManualClock clock = new();
        using (ProgressBar bar = new(error, "hydrating", time: clock))
        {
            clock.Ticks = TimeSpan.FromMilliseconds(600).Ticks;
            bar.Report(1, 4);
            bar.Report(26, 100);
            bar.Report(3, 4);
            bar.Complete();
        }
        string[] lines = error.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(["hydrating: 25.0%", "hydrating: 75.0%", "hydrating: 100.0%"], lines.Select(l => l.TrimEnd('\r')).ToArray());
        Assert.DoesNotContain('\r', error.ToString().Replace("\r\n", "\n", StringComparison.Ordinal));
    }
}

public sealed class TransferProgressTests
{
    [Fact]
    public void Copying_work_shows_bytes_rate_and_time_left()
    {
        StringWriter error = new();
        ManualClock clock = new();
        using (ProgressBar bar = new(error, "converting", showBytes: true, clock))
        {
            clock.Ticks = TimeSpan.TicksPerSecond * 2;
            bar.Report(256L << 20, 1L << 30);
            bar.Complete();
        }
        string[] lines = error.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        // 256 MiB in 2 s is 128 MiB/s; the 768 MiB left take 6 s at that rate.
        Assert.Equal("converting: 25.0% (256 MiB of 1 GiB, 128 MiB/s, 6 s left)", lines[0].TrimEnd('\r'));
        Assert.StartsWith("converting: 100.0% (1 GiB of 1 GiB,", lines[^1]);
    }
}

/// <summary>A clock the test moves by hand.</summary>
internal sealed class ManualClock : TimeProvider
{
    public long Ticks { get; set; }

    public override long TimestampFrequency => TimeSpan.TicksPerSecond;

    public override long GetTimestamp() => Ticks;
}
