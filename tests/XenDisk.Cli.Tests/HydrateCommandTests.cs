using System.Text.Json;
using XenDisk.Cli.Tests.Support;
using XenDisk.Service.Control;

namespace XenDisk.Cli.Tests;

/// <summary>`xendisk hydrate DEVICE` against a running (simulated) service, and `xendisk status` showing the run.</summary>
public sealed class HydrateCommandTests : IDisposable
{
    private const long BaseSize = 8L << 20;

    private readonly TempDirectory _dir = new();
    private readonly string _base;

    public HydrateCommandTests()
    {
        _base = _dir.RawBase("golden.img", BaseSize);
    }

    public void Dispose() => _dir.Dispose();

    private string Socket => _dir.File("control.sock");

    [Fact]
    public async Task Hydrate_wait_draws_progress_until_the_overlay_no_longer_needs_its_base_and_status_shows_it()
    {
        string overlay = _dir.File("vm.qcow2");
        await using SimulatedService service = await SimulatedService.StartAsync(_dir.Path, _dir.Path);
        string device = (await service.AttachAsync($"cow:{_base},{overlay},format=qcow2", connect: false)).Name;

        // About two seconds at this rate: long enough for progress lines on stderr.
        CliResult result = Xendisk.Run("hydrate", device, "--rate", "4M", "--wait", "--socket", Socket);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Matches(@"Hydrated /local/domain/0/backend/vbd/\d+/51712 \(8388608 bytes copied from the base\); its overlay no longer needs its base\.", result.Output);
        Assert.Contains("hydrating: ", result.Error, StringComparison.Ordinal);
        Assert.Contains("hydrating: 100.0%", result.Error, StringComparison.Ordinal);

        CliResult status = Xendisk.Run("status", "--socket", Socket);
        Assert.True(status.ExitCode == 0, status.ToString());
        Assert.Contains("  hydration finished, 8.0 MiB of 8.0 MiB (100.0%), 8.0 MiB copied; the overlay no longer needs its base", status.Output, StringComparison.Ordinal);

        // Hydrating a hydrated overlay is a quick no-op that finishes again; --json has the status's shape.
        CliResult again = Xendisk.Run("hydrate", device, "--wait", "--json", "--socket", Socket);
        Assert.True(again.ExitCode == 0, again.ToString());
        using JsonDocument json = JsonDocument.Parse(again.Output);
        Assert.EndsWith("/" + device, json.RootElement.GetProperty("device").GetString(), StringComparison.Ordinal);
        JsonElement hydration = json.RootElement.GetProperty("hydration");
        Assert.Equal("finished", hydration.GetProperty("state").GetString());
        Assert.Equal(BaseSize, hydration.GetProperty("bytesDone").GetInt64());
        Assert.Equal(BaseSize, hydration.GetProperty("bytesTotal").GetInt64());

        CliResult statusJson = Xendisk.Run("status", "--json", "--socket", Socket);
        using JsonDocument report = JsonDocument.Parse(statusJson.Output);
        JsonElement reported = report.RootElement.GetProperty("devices").EnumerateArray()
            .Single(d => d.GetProperty("backendPath").GetString()!.EndsWith("/" + device, StringComparison.Ordinal));
        Assert.Equal("finished", reported.GetProperty("hydration").GetProperty("state").GetString());
    }

    [Fact]
    public async Task Hydrate_runs_once_per_device_cancels_and_resumes_and_wait_fails_when_the_run_is_cancelled()
    {
        string overlay = _dir.File("vm.cow");
        await using SimulatedService service = await SimulatedService.StartAsync(_dir.Path, _dir.Path);
        string device = (await service.AttachAsync($"cow:{_base},{overlay},format=bitmap", connect: false)).Name;

        CliResult started = Xendisk.Run("hydrate", device, "--rate", "256k", "--socket", Socket);
        Assert.True(started.ExitCode == 0, started.ToString());
        Assert.Contains("in the background (at most 262144 bytes/s from the base)", started.Output, StringComparison.Ordinal);

        CliResult twice = Xendisk.Run("hydrate", device, "--socket", Socket);
        Assert.Equal(1, twice.ExitCode);
        Assert.Contains("a hydration is already running", twice.Error, StringComparison.Ordinal);

        CliResult cancelled = Xendisk.Run("hydrate", device, "--cancel", "--socket", Socket);
        Assert.True(cancelled.ExitCode == 0, cancelled.ToString());
        Assert.Contains("Cancelled the hydration of ", cancelled.Output, StringComparison.Ordinal);
        Assert.Contains($"xendisk hydrate {device} resumes it", cancelled.Output, StringComparison.Ordinal);
        CliResult nothing = Xendisk.Run("hydrate", device, "--cancel", "--socket", Socket);
        Assert.Equal(1, nothing.ExitCode);
        Assert.Contains("No hydration is running", nothing.Error, StringComparison.Ordinal);

        // A waiting client whose run is cancelled elsewhere exits non-zero and says so.
        Task<CliResult> waiting = Task.Run(() => Xendisk.Run("hydrate", device, "--rate", "256k", "--wait", "--socket", Socket));
        using (var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(60)))
        {
            while (!(await ControlClient.GetStatusAsync(Socket, cancellationToken: deadline.Token)).Devices.Any(d => d.Hydration?.IsRunning == true))
            {
                await Task.Delay(50, deadline.Token);
            }
        }

        await ControlClient.CancelHydrationAsync(Socket, device);
        CliResult stopped = await waiting.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal(1, stopped.ExitCode);
        Assert.Contains("was cancelled at ", stopped.Error, StringComparison.Ordinal);

        // Resumed without a limit, it finishes.
        CliResult resumed = Xendisk.Run("hydrate", device, "--wait", "--socket", Socket);
        Assert.True(resumed.ExitCode == 0, resumed.ToString());
        Assert.Contains("its overlay no longer needs its base", resumed.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Hydrate_refuses_raw_and_unknown_devices_with_the_services_reason()
    {
        await using SimulatedService service = await SimulatedService.StartAsync(_dir.Path, _dir.Path);

        CliResult raw = Xendisk.Run("hydrate", SimulatedService.RawDevice, "--socket", Socket);
        Assert.Equal(1, raw.ExitCode);
        Assert.StartsWith("xendisk: /local/domain/0/backend/vbd/1/51712 is a raw disk", raw.Error, StringComparison.Ordinal);

        CliResult unknown = Xendisk.Run("hydrate", "9/xvdb", "--socket", Socket);
        Assert.Equal(1, unknown.ExitCode);
        Assert.Contains("No device 9/51728 is served", unknown.Error, StringComparison.Ordinal);
        Xendisk.AssertNoStackTrace(unknown);
    }

    [Theory]
    [InlineData(2, "--rate fast: give a positive number", "hydrate", "1/51712", "--rate", "fast")]
    [InlineData(2, "--rate 0: give a positive number", "hydrate", "1/51712", "--rate", "0")]
    [InlineData(2, "--cancel takes neither --rate nor --wait", "hydrate", "1/51712", "--cancel", "--rate", "1M")]
    [InlineData(2, "--cancel takes neither --rate nor --wait", "hydrate", "1/51712", "--cancel", "--wait")]
    [InlineData(2, "\"xvda\" names no device", "hydrate", "xvda")]
    [InlineData(2, "\"1/sdz\" names no device", "hydrate", "1/sdz")]
    [InlineData(69, "No xendisk service is running", "hydrate", "1/51712", "--socket", "{dir}/absent.sock")]
    [InlineData(69, "No xendisk service is running", "hydrate", "1/51712", "--cancel", "--socket", "{dir}/absent.sock")]
    public void Hydrate_refuses_bad_arguments_and_a_missing_service_with_a_message(int exitCode, string message, params string[] args)
    {
        string[] resolved = args.Select(a => a.Replace("{dir}", _dir.Path, StringComparison.Ordinal)).ToArray();

        CliResult result = Xendisk.Run(resolved);

        Assert.True(result.ExitCode == exitCode, result.ToString());
        Assert.StartsWith("xendisk: ", result.Error, StringComparison.Ordinal);
        Assert.Contains(message, result.Error, StringComparison.Ordinal);
        Xendisk.AssertNoStackTrace(result);
    }
}
