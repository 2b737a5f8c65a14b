using XenDisk.Cli.Tests.Support;
using XenDisk.Storage.Iscsi;
using XenDisk.TestSupport.Iscsi;

namespace XenDisk.Cli.Tests;

/// <summary>`xendisk io` and `xendisk image` on iSCSI LUNs served by a real tgtd.</summary>
[Trait(Needs.Key, Needs.Tgtd)]
public sealed class IscsiCliTests : IDisposable
{
    private const string Iqn = "iqn.2026-12.org.xendisk.test:cli";
    private const long Size = 8L << 20;

    private readonly TempDirectory _work = new("xendisk-cli-iscsi-");

    public void Dispose() => _work.Dispose();

    private TgtdTarget Start()
    {
        string lun = Path.Combine(_work.Path, "lun1.img");
        using (FileStream file = File.Create(lun))
        {
            file.SetLength(Size);
        }
        return TgtdTarget.Start(Path.Combine(_work.Path, "tgtd"), new TgtdTargetDefinition(Iqn, [new TgtdLun(1, lun)]));
    }

    [TgtdFact]
    public void Io_reads_and_writes_a_lun_named_by_url()
    {
        using TgtdTarget target = Start();
        string url = target.Url(Iqn, 1);
        CliResult wrote = Xendisk.Run("io", url, "-c", "write -P 0xab 64k 64k", "-c", "flush", "-c", "read -P 0xab 64k 64k", "-c", "read -P 0 0 64k");
        Assert.True(wrote.ExitCode == 0, wrote.Error);
        byte[] file = File.ReadAllBytes(Path.Combine(_work.Path, "lun1.img"));
        Assert.All(file.AsSpan(64 << 10, 64 << 10).ToArray(), b => Assert.Equal(0xab, b));
        CliResult wrong = Xendisk.Run("io", url, "-c", "read -P 0xcd 64k 4k");
        Assert.NotEqual(0, wrong.ExitCode);
        Xendisk.AssertNoStackTrace(wrong);
    }

    [TgtdFact]
    public void A_bad_url_or_a_missing_lun_is_one_clear_line()
    {
        using TgtdTarget target = Start();
        CliResult bad = Xendisk.Run("io", $"iscsi://{target.Portal}/{Iqn}", "-c", "read 0 4k");
        Assert.NotEqual(0, bad.ExitCode);
        Assert.Contains("the LUN is missing", bad.Error, StringComparison.Ordinal);
        CliResult missing = Xendisk.Run("io", target.Url(Iqn, 9), "-c", "read 0 4k");
        Assert.NotEqual(0, missing.ExitCode);
        Assert.Contains("has no LUN 9", missing.Error, StringComparison.Ordinal);
        Xendisk.AssertNoStackTrace(missing);
    }

    [TgtdFact]
    public void Unlock_shows_and_with_force_breaks_a_dead_hosts_reservation()
    {
        using TgtdTarget target = Start();
        string url = target.Url(Iqn, 1);
        using IscsiBlockDevice stale = IscsiBlockDevice.Open(IscsiUrl.Parse(url), readOnly: false, new IscsiOptions { ReservationKey = 0x5eed });
        CliResult refused = Xendisk.Run("io", url, "-c", "write -P 1 0 4k");
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Contains("reserved by another host (host key 0x0000000000005eed)", refused.Error, StringComparison.Ordinal);

        CliResult shown = Xendisk.Run("image", "unlock", url);
        Assert.Equal(0, shown.ExitCode);
        Assert.Contains("reserved by host key 0x0000000000005eed", shown.Output, StringComparison.Ordinal);

        CliResult broken = Xendisk.Run("image", "unlock", "--force", url);
        Assert.True(broken.ExitCode == 0, broken.Error);
        Assert.Contains("broke the reservation of host key 0x0000000000005eed", broken.Output, StringComparison.Ordinal);

        CliResult wrote = Xendisk.Run("io", url, "-c", "write -P 2 0 4k", "-c", "read -P 2 0 4k");
        Assert.True(wrote.ExitCode == 0, wrote.Error);
        // The tool reserved the LUN only while it wrote, and released it on exit.
        Assert.Null(IscsiBlockDevice.ReadReservation(IscsiUrl.Parse(url), new IscsiOptions()));
    }
}
