namespace XenDisk.Xen.Native.Tests;

public sealed class XenStorePermissionTextTests
{
    [Theory]
    [InlineData("n0", 0u, XenStoreAccess.None)]
    [InlineData("r5", 5u, XenStoreAccess.Read)]
    [InlineData("w3", 3u, XenStoreAccess.Write)]
    [InlineData("b1", 1u, XenStoreAccess.Both)]
    [InlineData("r32752", 32752u, XenStoreAccess.Read)]
    [InlineData("b4294967295", uint.MaxValue, XenStoreAccess.Both)]
    public void Parses_and_formats_back_to_the_same_text(string text, uint domainId, XenStoreAccess access)
    {
        XenStorePermission parsed = XenStorePermissionText.Parse(text);

        Assert.Equal(new XenStorePermission(domainId, access), parsed);
        Assert.Equal(text, XenStorePermissionText.Format(parsed));
    }

    [Theory]
    [InlineData("")]
    [InlineData("r")]
    [InlineData("5")]
    [InlineData("x5")]
    [InlineData("R5")]
    [InlineData("r-5")]
    [InlineData("r+5")]
    [InlineData(" r5")]
    [InlineData("r5 ")]
    [InlineData("r 5")]
    [InlineData("r0x10")]
    [InlineData("r4294967296")]
    [InlineData("r99999999999999999999")]
    [InlineData("r\u0665")] // ARABIC-INDIC DIGIT FIVE: a digit, but not an ASCII one
    [InlineData("rb5")]
    [InlineData("r5,n0")]
    public void Refuses_malformed_text(string text)
    {
        Assert.False(XenStorePermissionText.TryParse(text, out XenStorePermission permission));
        Assert.Equal(default, permission);
        FormatException error = Assert.Throws<FormatException>(() => XenStorePermissionText.Parse(text));
        Assert.Contains($"'{text}'", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Formats_a_list_the_way_xenstore_ls_shows_it()
    {
        XenStorePermission[] permissions = [new(0, XenStoreAccess.None), new(5, XenStoreAccess.Read), new(7, XenStoreAccess.Both)];

        Assert.Equal("n0,r5,b7", XenStorePermissionText.Format(permissions));
    }

    [Theory]
    [InlineData(0x00u, XenStoreAccess.None)]
    [InlineData(0x01u, XenStoreAccess.Read)]
    [InlineData(0x02u, XenStoreAccess.Write)]
    [InlineData(0x03u, XenStoreAccess.Both)]
    [InlineData(0x0Bu, XenStoreAccess.Both)] // XS_PERM_OWNER | READ | WRITE
    [InlineData(0x14u, XenStoreAccess.None)] // XS_PERM_IGNORE | XS_PERM_ENOENT_OK
    public void Native_permission_bits_map_to_access_without_xenstored_internal_bits(uint perms, XenStoreAccess access)
    {
        XenStorePermission permission = XenStorePermissionText.FromNative(new Interop.XenStore.XsPermissions { id = 9, perms = perms });

        Assert.Equal(new XenStorePermission(9, access), permission);
        Assert.Equal(perms & 3, XenStorePermissionText.ToNative(permission).perms);
    }
}
