using System.Text.Json;
using XenDisk.Cli.Tests.Support;

namespace XenDisk.Cli.Tests;

/// <summary>`xendisk resize DEVICE` against a running (simulated) service serving a raw file that grew under it.</summary>
public sealed class ResizeCommandTests : IDisposable
{
    private readonly TempDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    private string Socket => _dir.File("control.sock");

    [Fact]
    public async Task Resize_tells_the_guest_the_new_size_of_a_grown_raw_file_and_says_so_once()
    {
        string disk = _dir.RawBase("disk.img", 8L << 20);
        // The periodic look is off so that the command, not the timer, finds the change.
        await using SimulatedService service = await SimulatedService.StartAsync(_dir.Path, _dir.Path, new Dictionary<string, string?> { ["Backend:SizeCheckSeconds"] = "0" });
        string device = (await service.AttachAsync($"raw:{disk}", connect: false)).Name;

        CliResult unchanged = Xendisk.Run("resize", device, "--socket", Socket);
        Assert.True(unchanged.ExitCode == 0, unchanged.ToString());
        Assert.Matches(@"^/local/domain/0/backend/vbd/\d+/51712: 8388608 bytes, as the guest already sees it\.", unchanged.Output);

        using (var file = new FileStream(disk, FileMode.Open, FileAccess.Write))
        {
            file.SetLength(12L << 20);
        }

        CliResult resized = Xendisk.Run("resize", device, "--json", "--socket", Socket);
        Assert.True(resized.ExitCode == 0, resized.ToString());
        using JsonDocument json = JsonDocument.Parse(resized.Output);
        Assert.EndsWith("/" + device, json.RootElement.GetProperty("device").GetString(), StringComparison.Ordinal);
        JsonElement resize = json.RootElement.GetProperty("resize");
        Assert.Equal(8L << 20, resize.GetProperty("oldSizeBytes").GetInt64());
        Assert.Equal(12L << 20, resize.GetProperty("sizeBytes").GetInt64());
        Assert.True(resize.GetProperty("changed").GetBoolean());

        CliResult status = Xendisk.Run("status", "--json", "--socket", Socket);
        using JsonDocument report = JsonDocument.Parse(status.Output);
        JsonElement reported = report.RootElement.GetProperty("devices").EnumerateArray()
            .Single(d => d.GetProperty("backendPath").GetString()!.EndsWith("/" + device, StringComparison.Ordinal));
        Assert.Equal(12L << 20, reported.GetProperty("disk").GetProperty("sizeBytes").GetInt64());
    }

    [Fact]
    public async Task Resize_of_a_device_the_service_does_not_serve_is_one_clear_error()
    {
        await using SimulatedService service = await SimulatedService.StartAsync(_dir.Path, _dir.Path);

        CliResult result = Xendisk.Run("resize", "9/xvdc", "--socket", Socket);

        Assert.Equal(1, result.ExitCode);
        Assert.Contains("No device 9/51744 is served by this xendisk", result.Error, StringComparison.Ordinal);
        Assert.Equal("", result.Output);
    }
}
