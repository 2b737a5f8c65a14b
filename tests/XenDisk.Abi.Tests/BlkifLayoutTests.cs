using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using XenDisk.Abi;

namespace XenDisk.Abi.Tests;

/// <summary>Every size and offset against the numbers blkif.h and ring.h imply for each ABI.</summary>
public class BlkifLayoutTests
{
    [Fact]
    public void Sizes_match_blkif_h()
    {
        Assert.Equal(8, Unsafe.SizeOf<BlkifRequestSegment>());
        Assert.Equal(112, Unsafe.SizeOf<BlkifRequest64>());
        Assert.Equal(108, Unsafe.SizeOf<BlkifRequest32>());
        Assert.Equal(32, Unsafe.SizeOf<BlkifRequestDiscard64>());
        Assert.Equal(28, Unsafe.SizeOf<BlkifRequestDiscard32>());
        Assert.Equal(64, Unsafe.SizeOf<BlkifRequestIndirect64>());
        Assert.Equal(64, Unsafe.SizeOf<BlkifRequestIndirect32>());
        Assert.Equal(16, Unsafe.SizeOf<BlkifResponse64>());
        Assert.Equal(12, Unsafe.SizeOf<BlkifResponse32>());
        Assert.Equal(64, Unsafe.SizeOf<SharedRingHeader>());
        Assert.Equal(512, BlkifLimits.SegmentsPerIndirectPage);
    }

    [Theory]
    [InlineData(typeof(BlkifRequest64), "Operation", 0)]
    [InlineData(typeof(BlkifRequest64), "NrSegments", 1)]
    [InlineData(typeof(BlkifRequest64), "Handle", 2)]
    [InlineData(typeof(BlkifRequest64), "Id", 8)]
    [InlineData(typeof(BlkifRequest64), "SectorNumber", 16)]
    [InlineData(typeof(BlkifRequest64), "Segments", 24)]
    [InlineData(typeof(BlkifRequest32), "Operation", 0)]
    [InlineData(typeof(BlkifRequest32), "NrSegments", 1)]
    [InlineData(typeof(BlkifRequest32), "Handle", 2)]
    [InlineData(typeof(BlkifRequest32), "Id", 4)]
    [InlineData(typeof(BlkifRequest32), "SectorNumber", 12)]
    [InlineData(typeof(BlkifRequest32), "Segments", 20)]
    [InlineData(typeof(BlkifRequestDiscard64), "Flag", 1)]
    [InlineData(typeof(BlkifRequestDiscard64), "Id", 8)]
    [InlineData(typeof(BlkifRequestDiscard64), "SectorNumber", 16)]
    [InlineData(typeof(BlkifRequestDiscard64), "NrSectors", 24)]
    [InlineData(typeof(BlkifRequestDiscard32), "Id", 4)]
    [InlineData(typeof(BlkifRequestDiscard32), "SectorNumber", 12)]
    [InlineData(typeof(BlkifRequestDiscard32), "NrSectors", 20)]
    [InlineData(typeof(BlkifRequestIndirect64), "IndirectOperation", 1)]
    [InlineData(typeof(BlkifRequestIndirect64), "NrSegments", 2)]
    [InlineData(typeof(BlkifRequestIndirect64), "Id", 8)]
    [InlineData(typeof(BlkifRequestIndirect64), "SectorNumber", 16)]
    [InlineData(typeof(BlkifRequestIndirect64), "Handle", 24)]
    [InlineData(typeof(BlkifRequestIndirect64), "IndirectGrantRefs", 28)]
    [InlineData(typeof(BlkifRequestIndirect32), "IndirectOperation", 1)]
    [InlineData(typeof(BlkifRequestIndirect32), "NrSegments", 2)]
    [InlineData(typeof(BlkifRequestIndirect32), "Id", 4)]
    [InlineData(typeof(BlkifRequestIndirect32), "SectorNumber", 12)]
    [InlineData(typeof(BlkifRequestIndirect32), "Handle", 20)]
    [InlineData(typeof(BlkifRequestIndirect32), "IndirectGrantRefs", 24)]
    [InlineData(typeof(BlkifResponse64), "Id", 0)]
    [InlineData(typeof(BlkifResponse64), "Operation", 8)]
    [InlineData(typeof(BlkifResponse64), "Status", 10)]
    [InlineData(typeof(BlkifResponse32), "Id", 0)]
    [InlineData(typeof(BlkifResponse32), "Operation", 8)]
    [InlineData(typeof(BlkifResponse32), "Status", 10)]
    [InlineData(typeof(BlkifRequestSegment), "GrantRef", 0)]
    [InlineData(typeof(BlkifRequestSegment), "FirstSector", 4)]
    [InlineData(typeof(BlkifRequestSegment), "LastSector", 5)]
    [InlineData(typeof(SharedRingHeader), "RequestProducer", 0)]
    [InlineData(typeof(SharedRingHeader), "RequestEvent", 4)]
    [InlineData(typeof(SharedRingHeader), "ResponseProducer", 8)]
    [InlineData(typeof(SharedRingHeader), "ResponseEvent", 12)]
    public void Offsets_match_blkif_h(Type type, string field, int offset)
    {
        Assert.Equal(offset, (int)Marshal.OffsetOf(type, field));
    }

    [Theory]
    [InlineData(BlkifProtocol.X86_64, 0, 32)]
    [InlineData(BlkifProtocol.X86_64, 1, 64)]
    [InlineData(BlkifProtocol.X86_64, 2, 128)]
    [InlineData(BlkifProtocol.X86_64, 3, 256)]
    [InlineData(BlkifProtocol.X86_64, 4, 512)]
    [InlineData(BlkifProtocol.X86_32, 0, 32)]
    [InlineData(BlkifProtocol.X86_32, 1, 64)]
    [InlineData(BlkifProtocol.X86_32, 4, 512)]
    public void Ring_entry_count_is_the_power_of_two_below_what_fits(BlkifProtocol protocol, int order, int entries)
    {
        Assert.Equal(entries, RingGeometry.EntryCount(protocol, order));
        Assert.Equal(entries, RingGeometry.EntryCountForPages(protocol, 1 << order));
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(5)]
    public void Ring_order_beyond_the_protocol_is_refused(int order)
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => RingGeometry.EntryCount(BlkifProtocol.X86_64, order));
    }

    [Theory]
    [InlineData(null, true, BlkifProtocol.X86_64)]
    [InlineData("x86_64-abi", true, BlkifProtocol.X86_64)]
    [InlineData("x86_32-abi", true, BlkifProtocol.X86_32)]
    [InlineData("arm-abi", false, BlkifProtocol.X86_64)]
    [InlineData("x86_32-abi ", false, BlkifProtocol.X86_64)]
    public void Protocol_names_parse_strictly(string? text, bool ok, BlkifProtocol expected)
    {
        Assert.Equal(ok, BlkifProtocolNames.TryParse(text, out var protocol));
        if (ok)
        {
            Assert.Equal(expected, protocol);
        }
    }

    [Theory]
    [InlineData("4", true, XenbusState.Connected)]
    [InlineData("6", true, XenbusState.Closed)]
    [InlineData("9", false, XenbusState.Unknown)]
    [InlineData("-1", false, XenbusState.Unknown)]
    [InlineData(" 4", false, XenbusState.Unknown)]
    [InlineData("", false, XenbusState.Unknown)]
    [InlineData(null, false, XenbusState.Unknown)]
    public void Xenbus_state_parses_strictly(string? text, bool ok, XenbusState expected)
    {
        Assert.Equal(ok, XenbusStateText.TryParse(text, out var state));
        Assert.Equal(expected, state);
    }

    [Fact]
    public void Grant_copy_segment_matches_libxengnttab()
    {
        // xengnttab_grant_copy_segment_t on x86_64: two 8-byte unions, len, flags, status, padded to 24.
        Assert.Equal(24, Unsafe.SizeOf<XenDisk.Xen.GrantCopySegment>());
    }
}
