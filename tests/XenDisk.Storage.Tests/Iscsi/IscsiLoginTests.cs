using XenDisk.Storage.Iscsi;
using XenDisk.TestSupport.Iscsi;

namespace XenDisk.Storage.Tests.Iscsi;

/// <summary>Each way a login fails gives the operator exactly one line that says which, and no secret.</summary>
[Trait(Needs.Key, Needs.Tgtd)]
public sealed class IscsiLoginTests
{
    private const long Size = 8L << 20;
    private const string Secret = "correct-horse-secret";
    private const string WrongSecret = "wrong-battery-secret";

    [TgtdFact]
    public void Chap_logs_in_with_the_configured_secret()
    {
        using IscsiRig rig = IscsiRig.Start([Size], configure: d => d with { ChapUser = "xendisk", ChapSecret = Secret });
        using IscsiBlockDevice device = IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url()), readOnly: true,
            new IscsiOptions { Credentials = _ => new IscsiChap("xendisk", Secret) });
        Assert.Equal(Size, device.Info.SizeBytes);
    }

    [TgtdFact]
    public void A_wrong_chap_secret_is_one_line_naming_chap_without_the_secret()
    {
        using IscsiRig rig = IscsiRig.Start([Size], configure: d => d with { ChapUser = "xendisk", ChapSecret = Secret });
        StorageException e = Assert.Throws<StorageException>(() => IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url()), readOnly: true,
            new IscsiOptions { Credentials = _ => new IscsiChap("xendisk", WrongSecret) }));
        AssertOneLine(e.Message, rig.Url());
        Assert.Contains("CHAP authentication as \"xendisk\" was refused", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(WrongSecret, e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(Secret, e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(WrongSecret, e.ToString(), StringComparison.Ordinal);
    }

    [TgtdFact]
    public void Missing_chap_credentials_say_so()
    {
        using IscsiRig rig = IscsiRig.Start([Size], configure: d => d with { ChapUser = "xendisk", ChapSecret = Secret });
        StorageException e = Assert.Throws<StorageException>(() => IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url()), readOnly: true, new IscsiOptions()));
        AssertOneLine(e.Message, rig.Url());
        Assert.Contains("requires CHAP", e.Message, StringComparison.Ordinal);
    }

    [TgtdFact]
    public void A_missing_lun_is_one_line_naming_the_lun()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        StorageException e = Assert.Throws<StorageException>(() => IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url(lun: 5)), readOnly: true, new IscsiOptions()));
        AssertOneLine(e.Message, rig.Url(lun: 5));
        Assert.Contains("has no LUN 5", e.Message, StringComparison.Ordinal);
    }

    [TgtdFact]
    public void A_login_the_access_list_refuses_is_one_line_saying_so()
    {
        using IscsiRig rig = IscsiRig.Start([Size], configure: d => d with { AllowedInitiators = ["iqn.2026-12.org.xendisk.test:someone-else"] });
        StorageException e = Assert.Throws<StorageException>(() => IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url()), readOnly: true, new IscsiOptions()));
        AssertOneLine(e.Message, rig.Url());
        // tgt hides a target from an initiator its access list refuses (login status "target not found").
        Assert.Contains($"that admits initiator {IscsiOptions.DefaultInitiatorName}", e.Message, StringComparison.Ordinal);
        Assert.Contains("access list refuses", e.Message, StringComparison.Ordinal);
    }

    [TgtdFact]
    public void The_access_list_admits_the_configured_initiator_name()
    {
        const string Initiator = "iqn.2026-12.org.xendisk.test:host-a";
        using IscsiRig rig = IscsiRig.Start([Size], configure: d => d with { AllowedInitiators = [Initiator] });
        using IscsiBlockDevice device = IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url()), readOnly: true, new IscsiOptions { InitiatorName = Initiator });
        Assert.Equal(Size, device.Info.SizeBytes);
    }

    [TgtdFact]
    public void An_unknown_target_and_a_closed_port_each_say_which()
    {
        using IscsiRig rig = IscsiRig.Start([Size]);
        string unknown = $"iscsi://{rig.Target.Portal}/iqn.2026-12.org.xendisk.test:nothing/1";
        StorageException e = Assert.Throws<StorageException>(() => IscsiBlockDevice.Open(IscsiUrl.Parse(unknown), readOnly: true, new IscsiOptions()));
        AssertOneLine(e.Message, unknown);
        Assert.Contains("the portal has no target iqn.2026-12.org.xendisk.test:nothing", e.Message, StringComparison.Ordinal);
        rig.Target.Kill();
        StorageException closed = Assert.Throws<StorageException>(() => IscsiBlockDevice.Open(IscsiUrl.Parse(rig.Url()), readOnly: true, new IscsiOptions()));
        AssertOneLine(closed.Message, rig.Url());
        Assert.Contains("cannot reach the iSCSI portal", closed.Message, StringComparison.Ordinal);
    }

    private static void AssertOneLine(string message, string url)
    {
        Assert.StartsWith(url + ": ", message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', message);
    }
}
