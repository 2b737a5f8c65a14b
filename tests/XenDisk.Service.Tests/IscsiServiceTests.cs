using Microsoft.Extensions.Configuration;
using XenDisk.Abi;
using XenDisk.Service.Configuration;
using XenDisk.Service.Tests.Support;
using XenDisk.TestFrontend;
using XenDisk.TestSupport.Iscsi;

namespace XenDisk.Service.Tests;

/// <summary>The service serving iSCSI LUNs (a real tgtd on 127.0.0.1) to a guest on the simulated hypervisor.</summary>
[Trait(Needs.Key, Needs.Tgtd)]
[Collection(ProcessWideCollection.Name)]
public sealed class IscsiServiceTests : IDisposable
{
    private const string Iqn = "iqn.2026-12.org.xendisk.test:service";
    private const long LunSize = 8L << 20;

    private readonly TempDirectory _work = new("xendisk-service-iscsi-");
    private readonly string _images;

    public IscsiServiceTests()
    {
        _images = Directory.CreateDirectory(Path.Combine(_work.Path, "images")).FullName;
    }

    public void Dispose() => _work.Dispose();

    private string LunFile(int lun) => Path.Combine(_work.Path, $"lun{lun}.img");

    [TgtdFact]
    public async Task A_raw_lun_is_served_to_a_guest_and_every_byte_is_verified()
    {
        byte[] initial = Pattern((int)LunSize, 1);
        File.WriteAllBytes(LunFile(1), initial);
        using TgtdTarget target = TgtdTarget.Start(Path.Combine(_work.Path, "tgtd"), new TgtdTargetDefinition(Iqn, [new TgtdLun(1, LunFile(1))]));
        await using SimulatedService service = await SimulatedService.StartAsync(_work.Path, _images, Enabled());
        AttachedDisk disk = await service.AttachAsync("raw:" + target.Url(Iqn, 1));
        BlockFrontend guest = disk.Frontend!;

        // Every byte the target held reads back through the ring as it is in the LUN's file.
        const int Chunk = 128 << 10;
        byte[] back = new byte[Chunk];
        for (long offset = 0; offset < LunSize; offset += Chunk)
        {
            Assert.Equal(BlkifStatus.Okay, await guest.ReadAsync(offset / 512, back).WaitAsync(SimulatedService.Timeout));
            Assert.True(initial.AsSpan((int)offset, Chunk).SequenceEqual(back), $"read at {offset} differs from the LUN");
        }
        // The guest then rewrites the whole disk, in requests of varied sizes on both queues, and flushes.
        byte[] written = Pattern((int)LunSize, 2);
        int[] sizes = [4096, 512, 65536, 12288, 131072];
        long position = 0;
        for (int i = 0; position < LunSize; i++)
        {
            int length = (int)Math.Min(sizes[i % sizes.Length], LunSize - position);
            Assert.Equal(BlkifStatus.Okay, await guest.WriteAsync(position / 512, written.AsMemory((int)position, length), queue: i % 2).WaitAsync(SimulatedService.Timeout));
            position += length;
        }
        Assert.Equal(BlkifStatus.Okay, await guest.FlushAsync().WaitAsync(SimulatedService.Timeout));
        for (long offset = 0; offset < LunSize; offset += Chunk)
        {
            Assert.Equal(BlkifStatus.Okay, await guest.ReadAsync(offset / 512, back).WaitAsync(SimulatedService.Timeout));
            Assert.True(written.AsSpan((int)offset, Chunk).SequenceEqual(back), $"read-back at {offset} differs");
        }
        await service.DetachAsync(disk);
        Assert.Equal(written, File.ReadAllBytes(LunFile(1)));
    }

    [TgtdFact]
    public async Task Two_hosts_with_their_own_keys_never_both_serve_one_overlay_lun()
    {
        File.WriteAllBytes(LunFile(1), Pattern((int)LunSize, 3));
        using (FileStream overlay = File.Create(LunFile(2)))
        {
            overlay.SetLength(LunSize + (2 << 20));
        }
        using TgtdTarget target = TgtdTarget.Start(Path.Combine(_work.Path, "tgtd"),
            new TgtdTargetDefinition(Iqn, [new TgtdLun(1, LunFile(1)), new TgtdLun(2, LunFile(2))]));
        string description = $"cow:{target.Url(Iqn, 1)},{target.Url(Iqn, 2)},format=bitmap";
        string workA = Directory.CreateDirectory(Path.Combine(_work.Path, "host-a")).FullName;
        string workB = Directory.CreateDirectory(Path.Combine(_work.Path, "host-b")).FullName;
        // Each host has its own image directory (its demo guest's disk) and control socket.
        await using SimulatedService hostB = await SimulatedService.StartAsync(workB, Directory.CreateDirectory(Path.Combine(workB, "images")).FullName, Host("b", "0xb2"));
        await using (SimulatedService hostA = await SimulatedService.StartAsync(workA, Directory.CreateDirectory(Path.Combine(workA, "images")).FullName, Host("a", "0xa1")))
        {
            AttachedDisk disk = await hostA.AttachAsync(description);
            byte[] data = Pattern(8192, 4);
            Assert.Equal(BlkifStatus.Okay, await disk.Frontend!.WriteAsync(16, data).WaitAsync(SimulatedService.Timeout));

            // Host B is refused the overlay while host A serves it, and the refusal names A's key;
            // the golden LUN alone (read-only, unreserved) it may still serve.
            string? error = await hostB.AttachRefusedAsync(description);
            Assert.Contains("reserved by another host (host key 0x00000000000000a1)", error ?? "(no error node)", StringComparison.Ordinal);
            AttachedDisk golden = await hostB.AttachAsync("raw:" + target.Url(Iqn, 1), readOnly: true);
            await hostB.DetachAsync(golden);
            await hostA.DetachAsync(disk);
        }
        // Host A stopped cleanly and released the LUN: host B serves the overlay, with A's writes in it.
        AttachedDisk taken = await hostB.AttachAsync(description);
        byte[] back = new byte[8192];
        Assert.Equal(BlkifStatus.Okay, await taken.Frontend!.ReadAsync(16, back).WaitAsync(SimulatedService.Timeout));
        Assert.Equal(Pattern(8192, 4), back);
        await hostB.DetachAsync(taken);
    }

    private static Dictionary<string, string?> Host(string name, string key) => new()
    {
        ["Iscsi:Enabled"] = "true",
        ["Iscsi:InitiatorName"] = $"iqn.2026-12.org.xendisk.test:host-{name}",
        ["Iscsi:ReservationKey"] = key,
    };

    [Fact]
    public void Chap_secrets_are_matched_by_target_and_portal_and_never_printed()
    {
        IscsiSettings settings = new()
        {
            Enabled = true,
            Credentials =
            [
                new IscsiCredentialSettings { Portal = "10.0.0.1:3260", User = "portal-user", Secret = "portal-secret-1" },
                new IscsiCredentialSettings { Target = "iqn.2026-12.x:golden", User = "target-user", Secret = "target-secret-2" },
            ],
        };
        Assert.Empty(settings.Problems());
        var options = settings.ToOptions()!;
        Assert.Equal("target-user", options.Credentials(XenDisk.Storage.Iscsi.IscsiUrl.Parse("iscsi://10.0.0.1/iqn.2026-12.x:golden/1"))!.User);
        Assert.Equal("portal-user", options.Credentials(XenDisk.Storage.Iscsi.IscsiUrl.Parse("iscsi://10.0.0.1/iqn.2026-12.x:other/1"))!.User);
        Assert.Null(options.Credentials(XenDisk.Storage.Iscsi.IscsiUrl.Parse("iscsi://10.0.0.2/iqn.2026-12.x:other/1")));
        Assert.DoesNotContain("secret", settings.Credentials[0].ToString(), StringComparison.Ordinal);
        Assert.DoesNotContain("secret", options.Credentials(XenDisk.Storage.Iscsi.IscsiUrl.Parse("iscsi://10.0.0.1/iqn.2026-12.x:golden/1"))!.ToString(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("Iscsi:InitiatorName", "initiator", "Iscsi:InitiatorName")]
    [InlineData("Iscsi:ReservationKey", "xyz", "Iscsi:ReservationKey")]
    [InlineData("Iscsi:QueueDepth", "0", "Iscsi:QueueDepth")]
    [InlineData("Iscsi:Credentials:0:User", "u", "Iscsi:Credentials:0")]
    public void Bad_iscsi_settings_are_named(string key, string value, string expected)
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Iscsi:Enabled"] = "true",
            [key] = value,
        }).Build();
        IReadOnlyList<string> problems = ServiceConfiguration.Validate(configuration);
        Assert.Contains(problems, p => p.Contains(expected, StringComparison.Ordinal));
    }

    private static Dictionary<string, string?> Enabled() => new() { ["Iscsi:Enabled"] = "true" };

    private static byte[] Pattern(int length, int seed)
    {
        byte[] data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }
}
