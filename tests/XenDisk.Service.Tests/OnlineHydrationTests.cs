using System.Text.Json;
using XenDisk.Abi;
using XenDisk.Cow.Bitmap;
using XenDisk.Cow.Qcow2;
using XenDisk.Cow.Storage;
using XenDisk.Service.Control;
using XenDisk.Service.Tests.Support;
using XenDisk.Storage;
using XenDisk.TestFrontend;

namespace XenDisk.Service.Tests;

/// <summary>
/// Hydration of an attached disk through the control socket, on the whole service over the simulated
/// hypervisor: online beside a guest that keeps writing, refusals, one run per device, cancel and
/// resume, and runs stopped by the disk closing. Afterwards the overlays are checked offline, with
/// the engine and qemu-img.
/// </summary>
[Trait(Needs.Key, Needs.Qemu)]
public sealed class OnlineHydrationTests : IDisposable
{
    private const int BaseSize = 8 << 20;

    /// <summary>The base's one stretch of zeros: qcow2 hydration leaves it unallocated, since it reads as zeros without a base too.</summary>
    private const int ZeroStart = 3 << 20;

    private const int ZeroLength = 1 << 20;

    /// <summary>Slow enough that the guest's writes overlap the run (about two seconds for the base).</summary>
    private const long RacingRate = 4L << 20;

    private const int MaxRacingWrites = 5000;

    private readonly TempDirectory _work = new("xendisk-hydrate-");
    private readonly string _images;
    private readonly string _basePath;
    private readonly byte[] _base;

    public OnlineHydrationTests()
    {
        _images = Directory.CreateDirectory(Path.Combine(_work.Path, "images")).FullName;
        _basePath = Path.Combine(_images, "golden.img");
        _base = new byte[BaseSize];
        new Random(7).NextBytes(_base);
        _base.AsSpan(ZeroStart, ZeroLength).Clear();
        File.WriteAllBytes(_basePath, _base);
    }

    public void Dispose() => _work.Dispose();

    [Theory]
    [InlineData("qcow2")]
    [InlineData("bitmap")]
    public async Task Hydration_runs_online_beside_a_writing_guest_and_leaves_an_overlay_that_no_longer_needs_its_base(string format)
    {
        string overlay = Path.Combine(_images, "guest." + format);
        byte[] expected = (byte[])_base.Clone();
        await using SimulatedService service = await SimulatedService.StartAsync(_work.Path, _images);
        AttachedDisk disk = await service.AttachAsync($"cow:{_basePath},{overlay},format={format}");
        var guest = new Guest(disk.Frontend!, expected);
        var random = new Random(format.Length);
        for (int i = 0; i < 16; i++)
        {
            await guest.WriteVerifiedAsync(random);
        }

        (string device, HydrationReport started) = await ControlClient.StartHydrationAsync(service.SocketPath, disk.Name, RacingRate);

        Assert.Equal(disk.BackendPath, device);
        Assert.Equal(HydrationStates.Running, started.State);
        Assert.Equal(BaseSize, started.BytesTotal);
        Assert.Equal(RacingRate, started.BytesPerSecond);

        // The guest goes on writing (each write read back at once) while the overlay hydrates.
        int racing = 0;
        while (racing < MaxRacingWrites && (await service.HydrationAsync(disk))!.IsRunning)
        {
            await guest.WriteVerifiedAsync(random);
            racing++;
        }

        HydrationReport finished = await service.WaitForHydrationAsync(disk, h => !h.IsRunning, "the hydration to end");
        Assert.True(racing > 0, "the guest wrote while the hydration ran");
        Assert.Equal(HydrationStates.Finished, finished.State);
        Assert.Null(finished.Error);
        Assert.Equal(BaseSize, finished.BytesDone);
        Assert.True(finished.BytesCopied > 0, "the run copied from the base");
        Assert.NotNull(finished.EndedAt);
        Assert.Contains(service.HydrationLog.Lines, line => line.EventId == 4051 && line.Message.StartsWith(disk.BackendPath + ": hydration finished", StringComparison.Ordinal));

        // Every byte: the guest's where it wrote, before or during the run, the base everywhere else.
        await guest.VerifyWholeDiskAsync();
        await guest.WriteVerifiedAsync(random);

        ServiceStatusReport status = await service.StatusAsync();
        string text = StatusTextFormatter.Format(status);
        Assert.Contains("  hydration finished, 8.0 MiB of 8.0 MiB (100.0%)", text, StringComparison.Ordinal);
        Assert.Contains("the overlay no longer needs its base", text, StringComparison.Ordinal);
        using (JsonDocument json = JsonDocument.Parse(ControlClient.ToJson(status)))
        {
            JsonElement reported = json.RootElement.GetProperty("devices").EnumerateArray()
                .Single(d => d.GetProperty("backendPath").GetString() == disk.BackendPath).GetProperty("hydration");
            Assert.Equal("finished", reported.GetProperty("state").GetString());
            Assert.Equal(BaseSize, reported.GetProperty("bytesDone").GetInt64());
            Assert.Equal(BaseSize, reported.GetProperty("bytesTotal").GetInt64());
        }

        await service.StopAsync();

        // Offline, without the base: the overlay alone holds the whole disk.
        File.Move(_basePath, _basePath + ".moved");
        if (format == "qcow2")
        {
            using (FileImageDevice file = FileImageDevice.Open(overlay, readOnly: true))
            {
                Assert.Null(Qcow2Disk.ReadHeader(file).BackingFile);
            }

            using (Qcow2Image image = Qcow2Disk.Open(overlay, new Qcow2OpenOptions { ReadOnly = true }))
            {
                AssertContents(image, expected);
            }

            ProcessResult check = ProcessRunner.Run("qemu-img", "check", "-f", "qcow2", overlay);
            Assert.True(check.ExitCode == 0, check.ToString());
            ProcessResult info = ProcessRunner.Run("qemu-img", "info", "--output=json", "-f", "qcow2", overlay);
            Assert.True(info.ExitCode == 0, info.ToString());
            Assert.DoesNotContain("backing-filename", info.Output, StringComparison.Ordinal);
        }
        else
        {
            using RawBlockDevice cow = RawBlockDevice.Open(overlay, readOnly: true, new RawDeviceOptions { DirectIo = false });
            Assert.True(BitmapOverlay.ReadHeader(cow).IsStandalone, "the bitmap header records that the overlay stands alone");
            using BitmapOverlay image = BitmapOverlay.Open(cow, baseDevice: null, new BitmapOverlayOptions { ReadOnly = true, OwnsDevices = false });
            AssertContents(image, expected);
        }
    }

    [Fact]
    public async Task Hydrate_is_refused_for_raw_read_only_transient_and_unknown_devices_and_leaves_nothing_behind()
    {
        string existing = Path.Combine(_images, "readonly.qcow2");
        Qcow2Disk.Create(existing, new Qcow2CreateOptions { VirtualSize = BaseSize, BackingFile = _basePath, BackingFormat = "raw" });
        await using SimulatedService service = await SimulatedService.StartAsync(_work.Path, _images);
        DeviceReport raw = Assert.Single((await service.StatusAsync()).Devices);
        AttachedDisk readOnly = await service.AttachAsync($"cow:{_basePath},{existing}", readOnly: true, connect: false);
        AttachedDisk transient = await service.AttachAsync($"cow:{_basePath},{Path.Combine(_images, "scratch.qcow2")},policy=transient", connect: false);

        await AssertRefusedAsync(service, raw.BackendPath, "is a raw disk");
        await AssertRefusedAsync(service, $"{raw.FrontendDomainId}/xvda", "is a raw disk");
        await AssertRefusedAsync(service, readOnly.Name, "is attached read-only");
        await AssertRefusedAsync(service, transient.Name, "transient overlay");
        await AssertRefusedAsync(service, "42/51712", "No device 42/51712 is served");
        await AssertRefusedAsync(service, "/local/domain/0/backend/vbd/42/51712", "No device /local/domain/0/backend/vbd/42/51712 is served");
        await AssertRefusedAsync(service, "xvda", "names no device");
        ControlRefusedException notRunning = await Assert.ThrowsAsync<ControlRefusedException>(
            () => ControlClient.CancelHydrationAsync(service.SocketPath, readOnly.Name));
        Assert.Contains("No hydration is running on " + readOnly.BackendPath, notRunning.Message, StringComparison.Ordinal);

        // The raw protocol: requests without a device, with a negative rate, or naming no known command.
        ControlResponse noDevice = await ControlClient.SendAsync(service.SocketPath, new ControlRequest(ControlCommands.Hydrate));
        Assert.False(noDevice.Ok);
        Assert.Contains("No device named", noDevice.Error, StringComparison.Ordinal);
        ControlResponse negative = await ControlClient.SendAsync(service.SocketPath, new ControlRequest(ControlCommands.Hydrate, transient.Name, -1));
        Assert.False(negative.Ok);
        Assert.Contains("bytesPerSecond", negative.Error, StringComparison.Ordinal);
        ControlResponse unknown = await ControlClient.SendAsync(service.SocketPath, new ControlRequest("frobnicate"));
        Assert.False(unknown.Ok);
        Assert.Contains("known: status, hydrate, hydrate-cancel, resize", unknown.Error, StringComparison.Ordinal);

        ServiceStatusReport status = await service.StatusAsync();
        Assert.Equal(3, status.Devices.Count);
        Assert.All(status.Devices, d => Assert.Null(d.Hydration));
        Assert.DoesNotContain("hydration", StatusTextFormatter.Format(status), StringComparison.Ordinal);
    }

    [Fact]
    public async Task One_hydration_per_device_and_a_cancelled_one_resumes_where_it_stopped()
    {
        string overlay = Path.Combine(_images, "resume.qcow2");
        await using SimulatedService service = await SimulatedService.StartAsync(_work.Path, _images);
        AttachedDisk disk = await service.AttachAsync($"cow:{_basePath},{overlay},format=qcow2", connect: false);

        (_, HydrationReport first) = await ControlClient.StartHydrationAsync(service.SocketPath, disk.Name, 1L << 20);
        Assert.Equal(HydrationStates.Running, first.State);
        ControlRefusedException twice = await Assert.ThrowsAsync<ControlRefusedException>(
            () => ControlClient.StartHydrationAsync(service.SocketPath, disk.BackendPath, 0));
        Assert.Contains("a hydration is already running", twice.Message, StringComparison.Ordinal);

        await service.WaitForHydrationAsync(disk, h => h.BytesDone >= 1 << 20, "the first MiB");
        string running = StatusTextFormatter.Format(await service.StatusAsync());
        Assert.Contains("  hydration running, ", running, StringComparison.Ordinal);
        Assert.Contains("at most 1.0 MiB/s", running, StringComparison.Ordinal);

        (string device, HydrationReport cancelled) = await ControlClient.CancelHydrationAsync(service.SocketPath, disk.Name);
        Assert.Equal(disk.BackendPath, device);
        if (cancelled.IsRunning)
        {
            cancelled = await service.WaitForHydrationAsync(disk, h => !h.IsRunning, "the cancelled run to stop");
        }

        Assert.Equal(HydrationStates.Cancelled, cancelled.State);
        Assert.Null(cancelled.Error);
        Assert.Contains(service.HydrationLog.Lines, line => line.EventId == 4053 && line.Message.EndsWith("(on request); starting it again resumes it", StringComparison.Ordinal));
        Assert.InRange(cancelled.BytesDone, 1 << 20, BaseSize - 1);
        Assert.Contains("  hydration cancelled, ", StatusTextFormatter.Format(await service.StatusAsync()), StringComparison.Ordinal);
        ControlRefusedException again = await Assert.ThrowsAsync<ControlRefusedException>(
            () => ControlClient.CancelHydrationAsync(service.SocketPath, disk.Name));
        Assert.Contains("(the last one cancelled)", again.Message, StringComparison.Ordinal);

        // Started again, it copies only what the first run had not.
        (_, HydrationReport resumed) = await ControlClient.StartHydrationAsync(service.SocketPath, disk.Name, 0);
        Assert.Equal(0, resumed.BytesPerSecond);
        HydrationReport finished = await service.WaitForHydrationAsync(disk, h => !h.IsRunning, "the resumed run to end");
        Assert.Equal(HydrationStates.Finished, finished.State);
        Assert.InRange(finished.BytesCopied!.Value, 1, BaseSize - ZeroLength - (1 << 20));

        await service.StopAsync();
        File.Move(_basePath, _basePath + ".moved");
        ProcessResult check = ProcessRunner.Run("qemu-img", "check", "-f", "qcow2", overlay);
        Assert.True(check.ExitCode == 0, check.ToString());
        using Qcow2Image image = Qcow2Disk.Open(overlay, new Qcow2OpenOptions { ReadOnly = true });
        Assert.Null(image.BackingFile);
        AssertContents(image, _base);
    }

    [Fact]
    public async Task A_running_hydration_stops_when_its_device_is_removed_and_when_the_service_stops()
    {
        string qcow2 = Path.Combine(_images, "removed.qcow2");
        string bitmap = Path.Combine(_images, "stopped.cow");
        SimulatedService service = await SimulatedService.StartAsync(_work.Path, _images);
        await using (service)
        {
            AttachedDisk removed = await service.AttachAsync($"cow:{_basePath},{qcow2},format=qcow2", connect: false);
            AttachedDisk stopped = await service.AttachAsync($"cow:{_basePath},{bitmap},format=bitmap", connect: false);
            // At this rate neither run could finish before the test does.
            await ControlClient.StartHydrationAsync(service.SocketPath, removed.Name, 64L << 10);
            await ControlClient.StartHydrationAsync(service.SocketPath, stopped.Name, 64L << 10);

            // The backend stops the run and waits for it before it closes the disk and forgets the device.
            await service.DetachAsync(removed);
            await service.WaitForAsync(s => s.Devices.All(d => d.BackendPath != removed.BackendPath), "the removed device to go");
            AssertStoppedByDiskClose(service, removed.BackendPath);
            Assert.True((await service.HydrationAsync(stopped))!.IsRunning);

            await service.StopAsync();
            AssertStoppedByDiskClose(service, stopped.BackendPath);
        }

        // Both overlays are consistent, still over their base, and read as the base.
        ProcessResult check = ProcessRunner.Run("qemu-img", "check", "-f", "qcow2", qcow2);
        Assert.True(check.ExitCode == 0, check.ToString());
        using (Qcow2Image image = Qcow2Disk.Open(qcow2, new Qcow2OpenOptions { ReadOnly = true, BackingPolicy = AllowImages() }))
        {
            Assert.NotNull(image.BackingFile);
            AssertContents(image, _base);
        }

        using RawBlockDevice cow = RawBlockDevice.Open(bitmap, readOnly: true, new RawDeviceOptions { DirectIo = false });
        using RawBlockDevice baseDevice = RawBlockDevice.Open(_basePath, readOnly: true, new RawDeviceOptions { DirectIo = false });
        Assert.False(BitmapOverlay.ReadHeader(cow).IsStandalone);
        using BitmapOverlay overlay = BitmapOverlay.Open(cow, baseDevice, new BitmapOverlayOptions { ReadOnly = true, OwnsDevices = false });
        AssertContents(overlay, _base);
    }

    /// <summary>The run logged that it stopped because its disk closed (event 4053).</summary>
    private static void AssertStoppedByDiskClose(SimulatedService service, string backendPath) =>
        Assert.Contains(service.HydrationLog.Lines, line => line.EventId == 4053
            && line.Message.StartsWith(backendPath + ": hydration cancelled at ", StringComparison.Ordinal)
            && line.Message.Contains("stopped because the disk closed", StringComparison.Ordinal));

    private XenDisk.Cow.Policies.BackingFilePolicy AllowImages() => new()
    {
        Allow = (path, _) => path.StartsWith(_images + Path.DirectorySeparatorChar, StringComparison.Ordinal),
    };

    private static async Task AssertRefusedAsync(SimulatedService service, string device, string reason)
    {
        ControlRefusedException refused = await Assert.ThrowsAsync<ControlRefusedException>(
            () => ControlClient.StartHydrationAsync(service.SocketPath, device, 0));
        Assert.Contains(reason, refused.Message, StringComparison.Ordinal);
    }

    private static void AssertContents(IBlockDevice device, byte[] expected)
    {
        const int Chunk = 1 << 20;
        var read = new byte[Chunk];
        for (int offset = 0; offset < expected.Length; offset += Chunk)
        {
            Assert.Equal(IoStatus.Ok, device.ReadAt(offset, read));
            int differs = read.AsSpan().CommonPrefixLength(expected.AsSpan(offset, Chunk));
            Assert.True(differs == Chunk, $"byte {offset + differs} differs");
        }
    }

    /// <summary>A guest writing random data at random sectors (so copy-ups happen) and a model of what its disk holds.</summary>
    private sealed class Guest(BlockFrontend frontend, byte[] expected)
    {
        private const int MaxSectors = 64;

        public async Task WriteVerifiedAsync(Random random)
        {
            int sectors = random.Next(1, MaxSectors + 1);
            long sector = random.NextInt64(0, (expected.Length / BlkifLimits.SectorSize) - sectors + 1);
            var data = new byte[sectors * BlkifLimits.SectorSize];
            random.NextBytes(data);
            Assert.Equal(BlkifStatus.Okay, await frontend.WriteAsync(sector, data));
            data.CopyTo(expected, sector * BlkifLimits.SectorSize);
            var back = new byte[data.Length];
            Assert.Equal(BlkifStatus.Okay, await frontend.ReadAsync(sector, back));
            Assert.True(back.AsSpan().SequenceEqual(data), $"sector {sector} read back differs from what was just written");
        }

        public async Task VerifyWholeDiskAsync()
        {
            const int Chunk = 256 << 10;
            var read = new byte[Chunk];
            for (int offset = 0; offset < expected.Length; offset += Chunk)
            {
                Assert.Equal(BlkifStatus.Okay, await frontend.ReadAsync(offset / BlkifLimits.SectorSize, read));
                int same = read.AsSpan().CommonPrefixLength(expected.AsSpan(offset, Chunk));
                Assert.True(same == Chunk, $"the guest reads byte {offset + same} wrong");
            }
        }
    }
}
