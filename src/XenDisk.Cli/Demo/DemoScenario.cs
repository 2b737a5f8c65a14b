using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using XenDisk.Abi;
using XenDisk.Backend.ControlPlane;
using XenDisk.Cow.Provider;
using XenDisk.Cow.Qcow2;
using XenDisk.Storage;
using XenDisk.TestFrontend;
using XenDisk.Xen.Simulated;

namespace XenDisk.Cli.Demo;

/// <summary>What the demo runs: two guests with different negotiated features on one backend.</summary>
internal sealed record DemoSettings(TimeSpan Duration, long DiskBytes, int Seed, string? WorkDirectory);

internal sealed record DemoGuestReport(
    string Name,
    uint DomainId,
    string Disk,
    NegotiatedFrontendFeatures Negotiated,
    GuestWorkloadResult Workload,
    long BackendNotificationsSent,
    long BackendNotificationsSuppressed,
    long PersistentGrantHits,
    FrontendDisconnectResult Disconnect);

internal sealed record DemoReport(
    IReadOnlyList<DemoGuestReport> Guests,
    string GoldenBase,
    bool GoldenBaseUnchanged,
    string Qcow2OverlayCheck,
    int GrantMappingsLeftAfterDetach,
    bool Passed);

/// <summary>
/// The main job on an embedded default: a temporary golden base image shared read-only by two
/// guests, each writing only to its own overlay (qcow2 for one, the flat bitmap format for the
/// other); the backend on the simulated hypervisor; a multi-queue/multi-page/indirect/persistent
/// x86_64 guest and a plain single-page x86_32 guest; a verified mixed workload in which blocks
/// never written must read as the base and discarded ones as zeros; then a clean detach that must
/// leave no grant mapped, the base byte-for-byte unchanged, and the qcow2 overlay consistent.
/// </summary>
internal static class DemoScenario
{
    private const int GuestDeviceId = 51712; // xvda

    public static async Task<DemoReport> RunAsync(DemoSettings settings, ILoggerFactory loggerFactory, CancellationToken cancellationToken)
    {
        string directory = settings.WorkDirectory ?? Directory.CreateTempSubdirectory("xendisk-demo-").FullName;
        bool ownDirectory = settings.WorkDirectory is null;
        try
        {
            string goldenBase = Path.Combine(directory, "golden-base.img");
            byte[] baseHash = WriteGoldenBase(goldenBase, settings.DiskBytes);

            using var hypervisor = new SimulatedHypervisor();
            using var toolstack = new SimulatedToolstack(hypervisor);
            var backendOptions = new BackendOptions { MaxQueues = Math.Max(2, Environment.ProcessorCount) };
            var disks = new CowDiskProvider(new CowProviderOptions { AllowedBaseDirectories = [directory] });
            await using var backend = new BlockBackend(hypervisor.Platform(hypervisor.Dom0), disks, backendOptions, loggerFactory);
            await backend.StartAsync(cancellationToken).ConfigureAwait(false);

            var guests = new[]
            {
                new GuestPlan("guest-a", new FrontendOptions
                {
                    Protocol = BlkifProtocol.X86_64, Queues = 2, RingPageOrder = 2,
                    UseIndirect = true, MaxIndirectSegments = 64, UsePersistentGrants = true,
                }, Workers: 8, OverlayFile: "guest-a.qcow2", OverlayOptions: ""),
                new GuestPlan("guest-b", new FrontendOptions
                {
                    Protocol = BlkifProtocol.X86_32, Queues = 1, RingPageOrder = 0,
                    UseIndirect = false, UsePersistentGrants = false,
                }, Workers: 4, OverlayFile: "guest-b.bitmap", OverlayOptions: ",format=bitmap"),
            };

            var running = new List<(GuestPlan Plan, SimulatedDomain Domain, DiskAttachment Attachment, BlockFrontend Frontend, string Image)>();
            foreach (var plan in guests)
            {
                string image = Path.Combine(directory, plan.OverlayFile);
                var domain = hypervisor.CreateDomain(plan.Name, memoryPages: 16384);
                var attachment = toolstack.AttachDisk(domain, GuestDeviceId, $"cow:{goldenBase},{image}{plan.OverlayOptions}", readOnly: false);
                var frontend = new BlockFrontend(hypervisor, domain, attachment, plan.Options);
                await frontend.ConnectAsync(cancellationToken).ConfigureAwait(false);
                running.Add((plan, domain, attachment, frontend, image));
            }

            var workloads = running.Select((g, i) =>
                new GuestWorkload(g.Frontend, g.Plan.Workers, overGoldenBase: true).RunAsync(settings.Duration, settings.Seed + (i * 1000), cancellationToken)).ToArray();
            var results = await Task.WhenAll(workloads).ConfigureAwait(false);

            var reports = new List<DemoGuestReport>();
            for (int i = 0; i < running.Count; i++)
            {
                var g = running[i];
                var status = backend.FindDevice(g.Domain.Id, GuestDeviceId);
                var rings = status?.Queues.Select(q => q.Ring.Statistics).ToArray() ?? [];
                var negotiated = g.Frontend.NegotiatedFrontendFeatures;
                var disconnect = await g.Frontend.DisconnectAsync().ConfigureAwait(false);
                await toolstack.DetachDiskAsync(g.Attachment, TimeSpan.FromSeconds(10)).ConfigureAwait(false);
                reports.Add(new DemoGuestReport(
                    g.Plan.Name, g.Domain.Id, status?.Disk?.Description ?? g.Image, negotiated, results[i],
                    rings.Sum(r => r.NotificationsSent), rings.Sum(r => r.NotificationsSuppressed), rings.Sum(r => r.PersistentGrantHits),
                    disconnect));
                await g.Frontend.DisposeAsync().ConfigureAwait(false);
            }

            await backend.StopAsync(cancellationToken).ConfigureAwait(false);
            int leftMapped = hypervisor.ActiveGrantMappings;
            bool baseUnchanged = HashFile(goldenBase).AsSpan().SequenceEqual(baseHash);
            string overlayCheck = CheckQcow2Overlay(Path.Combine(directory, guests[0].OverlayFile), out bool overlayClean);
            bool passed = leftMapped == 0 && baseUnchanged && overlayClean && reports.All(r =>
                r.Workload.Mismatches == 0 && r.Workload.Errors == 0 && r.Workload.BytesVerified > 0 &&
                r.Disconnect.BackendReachedClosed && r.Disconnect.RingGrantsStillMapped == 0 && r.Disconnect.DataGrantsStillMapped == 0);
            return new DemoReport(reports, goldenBase, baseUnchanged, overlayCheck, leftMapped, passed);
        }
        finally
        {
            if (ownDirectory)
            {
                Directory.Delete(directory, recursive: true);
            }
        }
    }

    private sealed record GuestPlan(string Name, FrontendOptions Options, int Workers, string OverlayFile, string OverlayOptions);

    /// <summary>Fills the golden base with the workload's base pattern and returns its hash.</summary>
    private static byte[] WriteGoldenBase(string path, long bytes)
    {
        const int ChunkBlocks = 256;
        var chunk = new byte[ChunkBlocks * GuestWorkload.BlockSize];
        using (var file = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize: 0))
        {
            for (long block = 0; block < bytes / GuestWorkload.BlockSize; block += ChunkBlocks)
            {
                for (int b = 0; b < ChunkBlocks; b++)
                {
                    GuestWorkload.FillBlock(chunk.AsSpan(b * GuestWorkload.BlockSize, GuestWorkload.BlockSize), block + b, GuestWorkload.BaseGeneration);
                }

                file.Write(chunk);
            }
        }

        return HashFile(path);
    }

    private static byte[] HashFile(string path)
    {
        using var file = File.OpenRead(path);
        return SHA256.HashData(file);
    }

    /// <summary>Runs XenDisk's qcow2 checker over the closed overlay.</summary>
    private static string CheckQcow2Overlay(string path, out bool clean)
    {
        using var device = RawBlockDevice.Open(path, readOnly: true);
        var report = Qcow2Checker.Check(device);
        clean = report.IsClean;
        return report.IsClean ? "clean" : $"{report.Corruptions} corruptions, {report.Leaks} leaked clusters";
    }
}
