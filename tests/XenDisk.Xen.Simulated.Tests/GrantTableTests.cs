using System.Runtime.InteropServices;
using XenDisk.Abi;
using XenDisk.Xen;
using XenDisk.Xen.Simulated;
using Tmds.Linux;

namespace XenDisk.Xen.Simulated.Tests;

public sealed class GrantTableTests : IDisposable
{
    private readonly SimulatedHypervisor _hypervisor = new();
    private readonly SimulatedDomain _guest;
    private readonly IGrantTable _grants;

    public GrantTableTests()
    {
        _guest = _hypervisor.CreateDomain("guest");
        _grants = _hypervisor.Platform(_hypervisor.Dom0).OpenGrantTable();
    }

    public void Dispose()
    {
        _grants.Dispose();
        _hypervisor.Dispose();
    }

    [Fact]
    public unsafe void Map_aliases_the_guest_page_in_both_directions()
    {
        GuestPage page = _guest.AllocatePage();
        page.Span.Fill(0x5A);
        uint grantRef = _guest.GrantAccess(0, page, readOnly: false);

        Assert.Equal(0, _grants.MapGrantRefs(_guest.Id, [grantRef], writable: true, out nint address));
        var mapped = new Span<byte>((void*)address, XenPage.Size);
        Assert.Equal(0x5A, mapped[100]);
        Assert.NotEqual(page.Address, address);

        page.Span[7] = 0x11;
        Assert.Equal(0x11, mapped[7]);
        mapped[4095] = 0x22;
        Assert.Equal(0x22, page.Span[4095]);

        Assert.Equal(1, _hypervisor.ActiveGrantMappings);
        Assert.True(_guest.IsMapped(grantRef));
        Assert.Equal(0, _grants.Unmap(address, 1));
        Assert.Equal(0, _hypervisor.ActiveGrantMappings);
        Assert.False(_guest.IsMapped(grantRef));
    }

    [Fact]
    public unsafe void Multi_page_map_is_contiguous_and_keeps_ref_order()
    {
        GuestPage first = _guest.AllocatePage();
        GuestPage second = _guest.AllocatePage();
        GuestPage third = _guest.AllocatePage();
        first.Span.Fill(1);
        second.Span.Fill(2);
        third.Span.Fill(3);
        uint[] refs = [_guest.GrantAccess(0, third, false), _guest.GrantAccess(0, first, false), _guest.GrantAccess(0, second, false)];

        Assert.Equal(0, _grants.MapGrantRefs(_guest.Id, refs, writable: false, out nint address));
        var mapped = new ReadOnlySpan<byte>((void*)address, 3 * XenPage.Size);
        Assert.Equal(3, mapped[0]);
        Assert.Equal(1, mapped[XenPage.Size]);
        Assert.Equal(2, mapped[(2 * XenPage.Size) + 17]);
        Assert.Equal(3, _hypervisor.ActiveGrantMappings);
        Assert.Equal(-LibC.EINVAL, _grants.Unmap(address, 2));
        Assert.Equal(0, _grants.Unmap(address, 3));
    }

    [Fact]
    public void Read_only_grant_cannot_be_mapped_writable()
    {
        GuestPage page = _guest.AllocatePage();
        uint grantRef = _guest.GrantAccess(0, page, readOnly: true);

        Assert.Equal(-LibC.EACCES, _grants.MapGrantRefs(_guest.Id, [grantRef], writable: true, out nint address));
        Assert.Equal(0, address);
        Assert.False(_guest.IsMapped(grantRef));
        Assert.Equal(0, _grants.MapGrantRefs(_guest.Id, [grantRef], writable: false, out address));
        Assert.Equal(0, _grants.Unmap(address, 1));
    }

    [Fact]
    public unsafe void Read_only_mapping_is_really_read_only()
    {
        // Probe the protection through /proc/self/maps rather than by faulting the test host.
        GuestPage page = _guest.AllocatePage();
        uint grantRef = _guest.GrantAccess(0, page, readOnly: true);
        Assert.Equal(0, _grants.MapGrantRefs(_guest.Id, [grantRef], writable: false, out nint address));
        string line = File.ReadLines("/proc/self/maps").First(l => l.StartsWith(((ulong)address).ToString("x", System.Globalization.CultureInfo.InvariantCulture) + "-", StringComparison.Ordinal));
        Assert.StartsWith("r--s", line.Split(' ')[1], StringComparison.Ordinal);
        Assert.Equal(0, _grants.Unmap(address, 1));
    }

    [Fact]
    public void Unknown_ended_and_foreign_refs_fail_and_leave_nothing_mapped()
    {
        SimulatedDomain other = _hypervisor.CreateDomain("other");
        GuestPage good = _guest.AllocatePage();
        uint goodRef = _guest.GrantAccess(0, good, false);
        uint toOther = _guest.GrantAccess(other.Id, _guest.AllocatePage(), false);
        uint ended = _guest.GrantAccess(0, _guest.AllocatePage(), false);
        Assert.True(_guest.EndAccess(ended));

        Assert.Equal(-LibC.ENOENT, _grants.MapGrantRefs(_guest.Id, [goodRef, 9999], true, out nint address));
        Assert.Equal(0, address);
        Assert.Equal(-LibC.ENOENT, _grants.MapGrantRefs(_guest.Id, [goodRef, ended], true, out _));
        Assert.Equal(-LibC.EACCES, _grants.MapGrantRefs(_guest.Id, [goodRef, toOther], true, out _));
        Assert.Equal(-LibC.ENOENT, _grants.MapGrantRefs(77, [goodRef], true, out _));
        Assert.Equal(-LibC.EINVAL, _grants.MapGrantRefs(_guest.Id, [], true, out _));
        Assert.Equal(0, _hypervisor.ActiveGrantMappings);
        Assert.False(_guest.IsMapped(goodRef));
        Assert.True(_guest.EndAccess(goodRef));
    }

    [Fact]
    public void EndAccess_fails_while_mapped_and_succeeds_after_unmap()
    {
        uint grantRef = _guest.GrantAccess(0, _guest.AllocatePage(), false);
        Assert.Equal(0, _grants.MapGrantRefs(_guest.Id, [grantRef], true, out nint address));

        Assert.False(_guest.EndAccess(grantRef));
        Assert.True(_guest.IsGranted(grantRef));
        Assert.Equal(0, _grants.Unmap(address, 1));
        Assert.True(_guest.EndAccess(grantRef));
        Assert.False(_guest.IsGranted(grantRef));
        Assert.False(_guest.EndAccess(grantRef));
    }

    [Fact]
    public void Unmap_of_unknown_address_is_EINVAL()
    {
        Assert.Equal(-LibC.EINVAL, _grants.Unmap(0x1000, 1));
    }

    [Fact]
    public void SetMaxGrants_limits_pages_mapped_at_once()
    {
        _grants.SetMaxGrants(2);
        uint[] refs = [.. Enumerable.Range(0, 3).Select(_ => _guest.GrantAccess(0, _guest.AllocatePage(), false))];

        Assert.Equal(-LibC.ENOSPC, _grants.MapGrantRefs(_guest.Id, refs, true, out _));
        Assert.Equal(0, _grants.MapGrantRefs(_guest.Id, refs.AsSpan(0, 2), true, out nint address));
        Assert.Equal(-LibC.ENOSPC, _grants.MapGrantRefs(_guest.Id, refs.AsSpan(2, 1), true, out _));
        Assert.Equal(0, _grants.Unmap(address, 2));
        Assert.Equal(0, _grants.MapGrantRefs(_guest.Id, refs.AsSpan(2, 1), true, out address));
        Assert.Equal(0, _grants.Unmap(address, 1));
    }

    [Fact]
    public unsafe void Copy_reports_a_status_per_segment_and_others_are_unaffected()
    {
        GuestPage writable = _guest.AllocatePage();
        GuestPage readOnly = _guest.AllocatePage();
        readOnly.Span.Fill(0xEE);
        uint writableRef = _guest.GrantAccess(0, writable, false);
        uint readOnlyRef = _guest.GrantAccess(0, readOnly, true);
        byte[] local = new byte[XenPage.Size];
        byte[] fromGuest = new byte[XenPage.Size];
        local.AsSpan().Fill(0x42);

        fixed (byte* source = local)
        fixed (byte* destination = fromGuest)
        {
            GrantCopySegment[] segments =
            [
                GrantCopySegment.ToGuest((nint)source, _guest.Id, writableRef, 512, 1024),
                GrantCopySegment.ToGuest((nint)source, _guest.Id, readOnlyRef, 0, 512),
                GrantCopySegment.ToGuest((nint)source, _guest.Id, 12345, 0, 512),
                GrantCopySegment.ToGuest((nint)source, _guest.Id, writableRef, 4000, 512),
                GrantCopySegment.FromGuest(_guest.Id, readOnlyRef, 0, (nint)destination, 4096),
                GrantCopySegment.FromGuest(99, readOnlyRef, 0, (nint)destination, 16),
            ];

            Assert.Equal(0, _grants.Copy(segments));
            Assert.Equal(GrantStatus.Okay, segments[0].Status);
            Assert.Equal(GrantStatus.PermissionDenied, segments[1].Status);
            Assert.Equal(GrantStatus.BadGrantRef, segments[2].Status);
            Assert.Equal(GrantStatus.BadCopyArgument, segments[3].Status);
            Assert.Equal(GrantStatus.Okay, segments[4].Status);
            Assert.Equal(GrantStatus.BadDomain, segments[5].Status);
        }

        Assert.True(writable.Span[..512].IndexOfAnyExcept((byte)0) < 0);
        Assert.True(writable.Span.Slice(512, 1024).IndexOfAnyExcept((byte)0x42) < 0);
        Assert.True(writable.Span[1536..].IndexOfAnyExcept((byte)0) < 0);
        Assert.True(readOnly.Span.IndexOfAnyExcept((byte)0xEE) < 0);
        Assert.True(fromGuest.AsSpan().IndexOfAnyExcept((byte)0xEE) < 0);
    }

    [Fact]
    public void Destroying_the_granter_revokes_grants_but_keeps_mappings_valid()
    {
        GuestPage page = _guest.AllocatePage();
        page.Span.Fill(9);
        uint grantRef = _guest.GrantAccess(0, page, false);
        uint unmapped = _guest.GrantAccess(0, _guest.AllocatePage(), false);
        Assert.Equal(0, _grants.MapGrantRefs(_guest.Id, [grantRef], true, out nint address));

        _hypervisor.DestroyDomain(_guest);

        Assert.Equal(9, Marshal.ReadByte(address, 10));
        Assert.Equal(-LibC.ENOENT, _grants.MapGrantRefs(_guest.Id, [unmapped], true, out _));
        Assert.Equal(0, _grants.Unmap(address, 1));
        Assert.Equal(0, _hypervisor.ActiveGrantMappings);
    }
}
