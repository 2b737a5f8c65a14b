using System.Runtime.InteropServices;

namespace XenDisk.Xen.Native.Tests;

/// <summary>Managed mirrors of C structs the bindings pass by pointer, against the headers' layouts (x86_64).</summary>
public sealed class LayoutTests
{
    // tools/include/xengnttab.h: struct xengnttab_grant_copy_segment { union xengnttab_copy_ptr
    // { void *virt; struct { uint32_t ref; uint16_t offset; uint16_t domid; } foreign; } source, dest;
    // uint16_t len; uint16_t flags; int16_t status; }: unions of 8 bytes at 0 and 8, then 16/18/20,
    // padded to 24 by the pointer's alignment.
    [Theory]
    [InlineData(nameof(GrantCopySegment.SourceVirtual), 0)]
    [InlineData(nameof(GrantCopySegment.SourceRef), 0)]
    [InlineData(nameof(GrantCopySegment.SourceOffset), 4)]
    [InlineData(nameof(GrantCopySegment.SourceDomain), 6)]
    [InlineData(nameof(GrantCopySegment.DestinationVirtual), 8)]
    [InlineData(nameof(GrantCopySegment.DestinationRef), 8)]
    [InlineData(nameof(GrantCopySegment.DestinationOffset), 12)]
    [InlineData(nameof(GrantCopySegment.DestinationDomain), 14)]
    [InlineData(nameof(GrantCopySegment.Length), 16)]
    [InlineData(nameof(GrantCopySegment.Flags), 18)]
    [InlineData(nameof(GrantCopySegment.Status), 20)]
    public void Grant_copy_segment_field_offsets_match_xengnttab_h(string field, int offset) =>
        Assert.Equal(offset, (int)Marshal.OffsetOf<GrantCopySegment>(field));

    [Fact]
    public unsafe void Grant_copy_segment_is_24_bytes_like_xengnttab_h()
    {
        Assert.Equal(24, sizeof(GrantCopySegment));
        Assert.Equal(24, Marshal.SizeOf<GrantCopySegment>());
    }

    [Fact]
    public unsafe void Grant_copy_segment_writes_land_where_the_C_struct_reads_them()
    {
        GrantCopySegment segment = GrantCopySegment.FromGuest(domainId: 0x1234, grantRef: 0xAABBCCDD, offset: 0x0200, destination: unchecked((nint)0x1122334455667788), length: 0x0400);
        byte* bytes = (byte*)&segment;

        Assert.Equal(0xAABBCCDDu, *(uint*)(bytes + 0));
        Assert.Equal((ushort)0x0200, *(ushort*)(bytes + 4));
        Assert.Equal((ushort)0x1234, *(ushort*)(bytes + 6));
        Assert.Equal(0x1122334455667788L, *(long*)(bytes + 8));
        Assert.Equal((ushort)0x0400, *(ushort*)(bytes + 16));
        Assert.Equal((ushort)1, *(ushort*)(bytes + 18)); // GNTCOPY_source_gref

        *(short*)(bytes + 20) = -3; // what the kernel writes for GNTST_bad_gntref
        Assert.Equal(XenDisk.Abi.GrantStatus.BadGrantRef, segment.Status);
    }

    [Fact]
    public unsafe void Xenstore_permission_struct_matches_xenstore_lib_h()
    {
        // struct xs_permissions { unsigned int id; unsigned int perms; }
        Assert.Equal(8, sizeof(Interop.XenStore.XsPermissions));
        Assert.Equal(0, (int)Marshal.OffsetOf<Interop.XenStore.XsPermissions>("id"));
        Assert.Equal(4, (int)Marshal.OffsetOf<Interop.XenStore.XsPermissions>("perms"));
    }
}
