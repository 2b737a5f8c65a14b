using XenDisk.Storage.Iscsi;

namespace XenDisk.Storage.Tests.Iscsi;

public sealed class IscsiUrlTests
{
    [Theory]
    [InlineData("iscsi://127.0.0.1/iqn.2026-12.example:golden/1", "127.0.0.1", 3260, "iqn.2026-12.example:golden", 1)]
    [InlineData("iscsi://san.example.com:3261/iqn.2026-12.example:golden/0", "san.example.com", 3261, "iqn.2026-12.example:golden", 0)]
    [InlineData("iscsi://[fd00::1]:860/iqn.2026-12.example:t/16383", "fd00::1", 860, "iqn.2026-12.example:t", 16383)]
    [InlineData("iscsi://host/eui.02004567A425678D/7", "host", 3260, "eui.02004567A425678D", 7)]
    [InlineData("iscsi://host/naa.52004567BA64678D/2", "host", 3260, "naa.52004567BA64678D", 2)]
    public void Accepts_the_forms_qemu_and_libiscsi_accept(string text, string host, int port, string iqn, int lun)
    {
        IscsiUrl url = IscsiUrl.Parse(text);
        Assert.Equal(host, url.Host);
        Assert.Equal(port, url.Port);
        Assert.Equal(iqn, url.TargetName);
        Assert.Equal(lun, url.Lun);
        Assert.Equal(url, IscsiUrl.Parse(url.ToString()));
    }

    [Fact]
    public void Portal_brackets_an_ipv6_address()
    {
        Assert.Equal("[fd00::1]:3260", IscsiUrl.Parse("iscsi://[fd00::1]/iqn.2026-12.x:y/1").Portal);
        Assert.Equal("10.0.0.1:3260", IscsiUrl.Parse("iscsi://10.0.0.1/iqn.2026-12.x:y/1").Portal);
    }

    [Theory]
    [InlineData("iscsi:/host/iqn.2026-12.x:y/1", "does not start with iscsi://")]
    [InlineData("ISCSI://host/iqn.2026-12.x:y/1", "lower case")]
    [InlineData("iscsi:///iqn.2026-12.x:y/1", "the host is empty")]
    [InlineData("iscsi://:3260/iqn.2026-12.x:y/1", "the host is empty")]
    [InlineData("iscsi://ho_st/iqn.2026-12.x:y/1", "the host \"ho_st\"")]
    [InlineData("iscsi://host:0/iqn.2026-12.x:y/1", "the port \"0\"")]
    [InlineData("iscsi://host:65536/iqn.2026-12.x:y/1", "the port \"65536\"")]
    [InlineData("iscsi://host:port/iqn.2026-12.x:y/1", "the port \"port\"")]
    [InlineData("iscsi://[fd00::1/iqn.2026-12.x:y/1", "no closing ']'")]
    [InlineData("iscsi://[not-v6]/iqn.2026-12.x:y/1", "is not an IPv6 address")]
    [InlineData("iscsi://[fd00::1]x/iqn.2026-12.x:y/1", "is not :PORT")]
    [InlineData("iscsi://host", "the target name and LUN are missing")]
    [InlineData("iscsi://host/iqn.2026-12.x:y", "the LUN is missing")]
    [InlineData("iscsi://host//1", "the target name is empty")]
    [InlineData("iscsi://host/target/1", "the target name \"target\"")]
    [InlineData("iscsi://host/iqn.2026-12.x:y z/1", "spaces or control characters")]
    [InlineData("iscsi://host/iqn.2026-12.x:y/", "the LUN \"\"")]
    [InlineData("iscsi://host/iqn.2026-12.x:y/-1", "the LUN \"-1\"")]
    [InlineData("iscsi://host/iqn.2026-12.x:y/16384", "the LUN \"16384\"")]
    [InlineData("iscsi://host/iqn.2026-12.x:y/1/2", "more after the LUN")]
    [InlineData("iscsi://host/iqn.2026-12.x:y/1?header_digest=crc32c", "query strings")]
    [InlineData("iscsi://host/iqn.2026-12.x:y/1,format=bitmap", "a comma")]
    [InlineData("iscsi://user%pass@host/iqn.2026-12.x:y/1", "credentials in the URL are not accepted")]
    public void Refuses_naming_the_bad_part(string text, string expected)
    {
        StorageException e = Assert.Throws<StorageException>(() => IscsiUrl.Parse(text));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        Assert.StartsWith("iSCSI URL ", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void A_password_in_a_refused_url_is_not_repeated()
    {
        StorageException e = Assert.Throws<StorageException>(() => IscsiUrl.Parse("iscsi://admin%s3cr3t-pw@host/iqn.2026-12.x:y/1"));
        Assert.DoesNotContain("s3cr3t-pw", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("admin", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Chap_credentials_print_without_their_secret()
    {
        IscsiChap chap = new("initiator-user", "very-secret-value");
        Assert.DoesNotContain("very-secret-value", chap.ToString(), StringComparison.Ordinal);
        Assert.DoesNotContain("very-secret-value", new IscsiOptions { Credentials = _ => chap }.ToString(), StringComparison.Ordinal);
    }
}
