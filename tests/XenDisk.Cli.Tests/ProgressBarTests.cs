using XenDisk.Cli.Commands.Image;

namespace XenDisk.Cli.Tests;

public sealed class ProgressBarTests
{
    [Fact]
    public void ShortWork_PrintsNothing()
    {
        StringWriter error = new();
        using (ProgressBar bar = new(error, "checking"))
        {
            bar.Report(5, 10);
            bar.Complete();
        }
        Assert.Equal("", error.ToString());
    }

    [Fact]
    public void LongWork_NotOnATerminal_PrintsALinePerTenthAndTheEnd()
    {
        StringWriter error = new();
        using (ProgressBar bar = new(error, "hydrating"))
        {
            Thread.Sleep(600);
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
