using XenDisk.Abi;
using XenDisk.Backend.DataPlane;

namespace XenDisk.Backend.Tests.DataPlane;

public class BlkifRequestParserTests
{
    /// <summary>1 MiB: 2048 sectors of 512 bytes, 256 of 4096.</summary>
    private const long DiskBytes = 1 << 20;
    private const ulong DiskSectors = DiskBytes / 512;

    // Ids with every byte distinct and the high half set: echoing 4 bytes too few or from the wrong
    // offset (the x86_32 layout has id at 4, not 8) shows up as a different value.
    private const ulong Id = 0xA1B2C3D4_E5F60718;

    private static readonly BlkifProtocol[] Protocols = [BlkifProtocol.X86_64, BlkifProtocol.X86_32];
    private static readonly int[] SectorSizes = [512, 4096];

    private static RequestLimits Limits(BlkifProtocol protocol, int sectorSize = 512, bool readOnly = false, bool discard = true,
        bool secureDiscard = false, int maxIndirect = 256, long diskBytes = DiskBytes) =>
        new(protocol, diskBytes, sectorSize, readOnly, discard, secureDiscard, maxIndirect);

    private static RequestCheck Parse(byte[] slot, RequestLimits limits, out BlkifRequestInfo request)
    {
        var segments = new BlkifRequestSegment[BlkifLimits.MaxSegmentsPerRequest];
        return BlkifRequestParser.Parse(slot, limits, out request, segments);
    }

    private static Seg Full(uint gref = 7) => new(gref, 0, 7);

    /// <summary>A malformed or unsupported slot, the disk it meets, and the answer it must get.</summary>
    public sealed record Case(string Name, byte[] Slot, RequestLimits Limits, RequestCheck Expected, byte EchoedOperation)
    {
        public override string ToString() => Name;
    }

    public static IEnumerable<object[]> RefusedCases()
    {
        foreach (BlkifProtocol p in Protocols)
        {
            foreach (int sectorSize in SectorSizes)
            {
                foreach (Case c in RefusedCasesFor(p, sectorSize))
                {
                    yield return [c with { Name = $"{p}/{sectorSize}: {c.Name}" }];
                }
            }
        }
    }

    private static IEnumerable<Case> RefusedCasesFor(BlkifProtocol p, int sectorSize)
    {
        RequestLimits limits = Limits(p, sectorSize);
        const byte R = BlkifOperation.Read, W = BlkifOperation.Write;

        // Segment counts.
        yield return new("read without segments", WireSlots.ReadWrite(p, R, Id, 0, []), limits, RequestCheck.NoSegments, R);
        yield return new("write without segments", WireSlots.ReadWrite(p, W, Id, 0, []), limits, RequestCheck.NoSegments, W);
        foreach (int count in (int[])[12, 13, 64, 200, 255])
        {
            yield return new($"read with {count} direct segments", WireSlots.ReadWrite(p, R, Id, 0, Enumerable.Repeat(Full(), 11).ToArray(), nrSegments: count), limits, RequestCheck.TooManySegments, R);
            yield return new($"write with {count} direct segments", WireSlots.ReadWrite(p, W, Id, 0, Enumerable.Repeat(Full(), 11).ToArray(), nrSegments: count), limits, RequestCheck.TooManySegments, W);
            yield return new($"flush with {count} direct segments", WireSlots.ReadWrite(p, BlkifOperation.FlushDiskCache, Id, 0, [], nrSegments: count), limits, RequestCheck.TooManySegments, BlkifOperation.FlushDiskCache);
        }

        // Sector ranges inside a segment.
        foreach ((byte first, byte last) in ((byte, byte)[])[(1, 0), (7, 0), (255, 254), (8, 7)])
        {
            yield return new($"segment {first}..{last} reversed", WireSlots.ReadWrite(p, R, Id, 0, [new(1, first, last)]), limits, RequestCheck.SegmentSectorsReversed, R);
        }

        foreach ((byte first, byte last) in ((byte, byte)[])[(0, 8), (8, 15), (0, 255), (255, 255)])
        {
            yield return new($"segment {first}..{last} beyond its page", WireSlots.ReadWrite(p, W, Id, 0, [Full(), new(2, first, last)]), limits, RequestCheck.SegmentBeyondPage, W);
        }

        // Ranges beyond the disk, including ones whose end wraps around 2^64.
        ulong lastAligned = DiskSectors - 8;
        foreach (ulong sector in (ulong[])[DiskSectors, DiskSectors + 8, lastAligned + 8, 1UL << 54, 1UL << 55, ulong.MaxValue - 7, (ulong.MaxValue / 512) & ~7UL, long.MaxValue & ~7L])
        {
            yield return new($"read at sector {sector}", WireSlots.ReadWrite(p, R, Id, sector, [Full()]), limits, RequestCheck.OutOfRange, R);
            yield return new($"write at sector {sector}", WireSlots.ReadWrite(p, W, Id, sector, [Full(), Full()]), limits, RequestCheck.OutOfRange, W);
            yield return new($"discard at sector {sector}", WireSlots.Discard(p, Id, sector, 8), limits, RequestCheck.OutOfRange, BlkifOperation.Discard);
        }

        yield return new("read straddling the end", WireSlots.ReadWrite(p, R, Id, lastAligned, [Full(), Full()]), limits, RequestCheck.OutOfRange, R);
        yield return new("11 pages from the last page", WireSlots.ReadWrite(p, W, Id, lastAligned, Enumerable.Repeat(Full(), 11).ToArray()), limits, RequestCheck.OutOfRange, W);
        yield return new("discard length wrapping 2^64", WireSlots.Discard(p, Id, 8, ulong.MaxValue - 7), limits, RequestCheck.OutOfRange, BlkifOperation.Discard);
        yield return new("discard of the whole disk plus one block", WireSlots.Discard(p, Id, 0, DiskSectors + 8), limits, RequestCheck.OutOfRange, BlkifOperation.Discard);
        yield return new("discard ending one block late", WireSlots.Discard(p, Id, 8, DiskSectors), limits, RequestCheck.OutOfRange, BlkifOperation.Discard);
        yield return new("discard at the top of the sector space", WireSlots.Discard(p, Id, ulong.MaxValue - 7, 16), limits, RequestCheck.OutOfRange, BlkifOperation.Discard);
        yield return new("resized disk is smaller now", WireSlots.ReadWrite(p, R, Id, 1024, [Full()]), Limits(p, sectorSize, diskBytes: 512 * 1024), RequestCheck.OutOfRange, R);

        // Read-only disks.
        RequestLimits readOnly = Limits(p, sectorSize, readOnly: true);
        yield return new("write on a read-only disk", WireSlots.ReadWrite(p, W, Id, 0, [Full()]), readOnly, RequestCheck.ReadOnlyDevice, W);
        yield return new("barrier on a read-only disk", WireSlots.ReadWrite(p, BlkifOperation.WriteBarrier, Id, 0, []), readOnly, RequestCheck.ReadOnlyDevice, BlkifOperation.WriteBarrier);
        yield return new("flush with data on a read-only disk", WireSlots.ReadWrite(p, BlkifOperation.FlushDiskCache, Id, 0, [Full()]), readOnly, RequestCheck.ReadOnlyDevice, BlkifOperation.FlushDiskCache);
        yield return new("discard on a read-only disk", WireSlots.Discard(p, Id, 0, 8), readOnly, RequestCheck.ReadOnlyDevice, BlkifOperation.Discard);

        // Operations we do not do.
        foreach (byte op in (byte[])[BlkifOperation.Reserved1, 7, 8, 16, 0x80, 0xFF])
        {
            yield return new($"operation {op}", WireSlots.Other(p, op, Id, fill: 0xAA), limits, RequestCheck.UnknownOperation, op);
        }

        yield return new("discard not negotiated", WireSlots.Discard(p, Id, 0, 8), Limits(p, sectorSize, discard: false), RequestCheck.DiscardNotNegotiated, BlkifOperation.Discard);
        yield return new("secure discard not negotiated", WireSlots.Discard(p, Id, 0, 8, BlkifLimits.DiscardSecure), limits, RequestCheck.SecureDiscardNotNegotiated, BlkifOperation.Discard);
        yield return new("secure discard with other flag bits", WireSlots.Discard(p, Id, 0, 8, 0xFF), limits, RequestCheck.SecureDiscardNotNegotiated, BlkifOperation.Discard);

        // Indirect requests (the response echoes indirect_op).
        yield return new("indirect not negotiated", WireSlots.Indirect(p, R, Id, 0, 16, [1]), Limits(p, sectorSize, maxIndirect: 0), RequestCheck.IndirectNotNegotiated, R);
        foreach (byte op in (byte[])[BlkifOperation.WriteBarrier, BlkifOperation.FlushDiskCache, BlkifOperation.Reserved1, BlkifOperation.Discard, BlkifOperation.Indirect, 0xFF])
        {
            yield return new($"indirect_op {op}", WireSlots.Indirect(p, op, Id, 0, 16, [1]), limits, RequestCheck.BadIndirectOperation, op);
        }

        yield return new("indirect without segments", WireSlots.Indirect(p, R, Id, 0, 0, [1]), limits, RequestCheck.NoSegments, R);
        foreach (int count in (int[])[257, 512, 4096, 4097, 65535])
        {
            yield return new($"indirect with {count} segments over a max of 256", WireSlots.Indirect(p, W, Id, 0, count, [1, 2, 3, 4, 5, 6, 7, 8]), limits, RequestCheck.TooManySegments, W);
        }

        yield return new("indirect with 4097 segments over the protocol max", WireSlots.Indirect(p, W, Id, 0, 4097, [1, 2, 3, 4, 5, 6, 7, 8]), Limits(p, sectorSize, maxIndirect: 100_000), RequestCheck.TooManySegments, W);

        if (sectorSize == 4096)
        {
            // blkif.h "sector-size": sector_number stays in 512-byte units, so a 4 KiB disk needs
            // multiples of 8 everywhere.
            foreach (ulong sector in (ulong[])[1, 4, 7, 9, DiskSectors - 1, ulong.MaxValue])
            {
                yield return new($"4K read at sector {sector}", WireSlots.ReadWrite(p, R, Id, sector, [Full()]), limits, RequestCheck.Misaligned, R);
            }

            foreach ((byte first, byte last) in ((byte, byte)[])[(0, 0), (1, 7), (0, 6), (4, 7), (0, 3), (3, 3)])
            {
                yield return new($"4K segment {first}..{last}", WireSlots.ReadWrite(p, W, Id, 0, [Full(), new(2, first, last)]), limits, RequestCheck.Misaligned, W);
            }

            yield return new("4K discard of one 512-byte sector", WireSlots.Discard(p, Id, 0, 1), limits, RequestCheck.Misaligned, BlkifOperation.Discard);
            yield return new("4K discard at sector 4", WireSlots.Discard(p, Id, 4, 8), limits, RequestCheck.Misaligned, BlkifOperation.Discard);
        }
    }

    [Theory]
    [MemberData(nameof(RefusedCases))]
    public void Refused_requests_get_the_right_status_and_echo_id_and_operation(Case c)
    {
        RequestCheck check = Parse(c.Slot, c.Limits, out BlkifRequestInfo request);

        Assert.Equal(c.Expected, check);
        Assert.Equal(Id, request.Id);
        Assert.Equal(c.EchoedOperation, request.ResponseOperation);
        short expectedStatus = c.Expected is RequestCheck.UnknownOperation or RequestCheck.IndirectNotNegotiated
            or RequestCheck.DiscardNotNegotiated or RequestCheck.SecureDiscardNotNegotiated
            ? BlkifStatus.EOpNotSupp
            : BlkifStatus.Error;
        Assert.Equal(expectedStatus, check.ToStatus());
    }

    public static IEnumerable<object[]> AcceptedCases()
    {
        foreach (BlkifProtocol p in Protocols)
        {
            foreach (int sectorSize in SectorSizes)
            {
                RequestLimits limits = Limits(p, sectorSize, secureDiscard: true);
                string n = $"{p}/{sectorSize}";
                ulong last = DiskSectors - 8;
                yield return [new Case($"{n}: read of one page", WireSlots.ReadWrite(p, BlkifOperation.Read, Id, 8, [Full()]), limits, RequestCheck.Ok, BlkifOperation.Read), 8L * 512, 4096L, RingOperation.Read];
                yield return [new Case($"{n}: write of 11 pages", WireSlots.ReadWrite(p, BlkifOperation.Write, Id, 16, Enumerable.Repeat(Full(), 11).ToArray()), limits, RequestCheck.Ok, BlkifOperation.Write), 16L * 512, 11L * 4096, RingOperation.Write];
                yield return [new Case($"{n}: the last page of the disk", WireSlots.ReadWrite(p, BlkifOperation.Read, Id, last, [Full()]), limits, RequestCheck.Ok, BlkifOperation.Read), (long)last * 512, 4096L, RingOperation.Read];
                yield return [new Case($"{n}: flush without data", WireSlots.ReadWrite(p, BlkifOperation.FlushDiskCache, Id, ulong.MaxValue, []), limits, RequestCheck.Ok, BlkifOperation.FlushDiskCache), 0L, 0L, RingOperation.Flush];
                yield return [new Case($"{n}: barrier without data", WireSlots.ReadWrite(p, BlkifOperation.WriteBarrier, Id, 3, []), limits, RequestCheck.Ok, BlkifOperation.WriteBarrier), 0L, 0L, RingOperation.Barrier];
                yield return [new Case($"{n}: flush with data", WireSlots.ReadWrite(p, BlkifOperation.FlushDiskCache, Id, 24, [Full(), Full()]), limits, RequestCheck.Ok, BlkifOperation.FlushDiskCache), 24L * 512, 8192L, RingOperation.Flush];
                yield return [new Case($"{n}: discard of the whole disk", WireSlots.Discard(p, Id, 0, DiskSectors), limits, RequestCheck.Ok, BlkifOperation.Discard), 0L, DiskBytes, RingOperation.Discard];
                yield return [new Case($"{n}: secure discard when negotiated", WireSlots.Discard(p, Id, 64, 64, BlkifLimits.DiscardSecure), limits, RequestCheck.Ok, BlkifOperation.Discard), 64L * 512, 64L * 512, RingOperation.Discard];
                yield return [new Case($"{n}: empty discard at the end", WireSlots.Discard(p, Id, DiskSectors, 0), limits, RequestCheck.Ok, BlkifOperation.Discard), DiskBytes, 0L, RingOperation.Discard];
                yield return [new Case($"{n}: flush on a read-only disk", WireSlots.ReadWrite(p, BlkifOperation.FlushDiskCache, Id, 0, []), Limits(p, sectorSize, readOnly: true), RequestCheck.Ok, BlkifOperation.FlushDiskCache), 0L, 0L, RingOperation.Flush];
                yield return [new Case($"{n}: read on a read-only disk", WireSlots.ReadWrite(p, BlkifOperation.Read, Id, 0, [Full()]), Limits(p, sectorSize, readOnly: true), RequestCheck.Ok, BlkifOperation.Read), 0L, 4096L, RingOperation.Read];
                if (sectorSize == 512)
                {
                    yield return [new Case($"{n}: partial segments", WireSlots.ReadWrite(p, BlkifOperation.Read, Id, 1, [new(1, 3, 3), new(2, 0, 6), new(3, 7, 7)]), limits, RequestCheck.Ok, BlkifOperation.Read), 512L, 9L * 512, RingOperation.Read];
                    yield return [new Case($"{n}: the last sector of the disk", WireSlots.ReadWrite(p, BlkifOperation.Write, Id, DiskSectors - 1, [new(1, 5, 5)]), limits, RequestCheck.Ok, BlkifOperation.Write), (long)(DiskSectors - 1) * 512, 512L, RingOperation.Write];
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(AcceptedCases))]
    public void Valid_requests_are_accepted_with_their_byte_range(Case c, long offset, long length, RingOperation kind)
    {
        RequestCheck check = Parse(c.Slot, c.Limits, out BlkifRequestInfo request);

        Assert.Equal(RequestCheck.Ok, check);
        Assert.Equal(Id, request.Id);
        Assert.Equal(c.EchoedOperation, request.ResponseOperation);
        Assert.Equal(kind, request.Kind);
        Assert.Equal(offset, request.Offset);
        Assert.Equal(length, request.Length);
    }

    [Theory]
    [InlineData(BlkifProtocol.X86_64)]
    [InlineData(BlkifProtocol.X86_32)]
    public void Direct_segments_are_copied_in_order(BlkifProtocol p)
    {
        Seg[] segments = [new(0x01020304, 0, 7), new(0xFFFFFFFF, 2, 5), new(42, 7, 7)];
        var copy = new BlkifRequestSegment[BlkifLimits.MaxSegmentsPerRequest];

        RequestCheck check = BlkifRequestParser.Parse(WireSlots.ReadWrite(p, BlkifOperation.Write, Id, 0, segments, fill: 0xAA), Limits(p), out BlkifRequestInfo request, copy);

        Assert.Equal(RequestCheck.Ok, check);
        Assert.Equal(3, request.SegmentCount);
        for (int i = 0; i < segments.Length; i++)
        {
            Assert.Equal(segments[i].GrantRef, copy[i].GrantRef);
            Assert.Equal(segments[i].First, copy[i].FirstSector);
            Assert.Equal(segments[i].Last, copy[i].LastSector);
        }
    }

    [Theory]
    [InlineData(BlkifProtocol.X86_64, 1, 1)]
    [InlineData(BlkifProtocol.X86_64, 256, 1)]
    [InlineData(BlkifProtocol.X86_32, 512, 1)]
    [InlineData(BlkifProtocol.X86_32, 513, 2)]
    [InlineData(BlkifProtocol.X86_64, 4096, 8)]
    public void Indirect_decode_reads_refs_and_counts_pages(BlkifProtocol p, int segments, int pages)
    {
        uint[] refs = [11, 22, 33, 44, 55, 66, 77, 88];
        RequestCheck check = BlkifRequestParser.Decode(WireSlots.Indirect(p, BlkifOperation.Write, Id, 64, segments, refs), Limits(p, maxIndirect: 4096),
            out BlkifRequestInfo request, new BlkifRequestSegment[11]);

        Assert.Equal(RequestCheck.Ok, check);
        Assert.True(request.IsIndirect);
        Assert.Equal(RingOperation.Write, request.Kind);
        Assert.Equal(BlkifOperation.Write, request.ResponseOperation);
        Assert.Equal(segments, request.SegmentCount);
        Assert.Equal(pages, request.IndirectPageCount);
        Assert.Equal(64UL, request.SectorNumber);
        for (int i = 0; i < 8; i++)
        {
            Assert.Equal(refs[i], request.IndirectGrantRefs[i]);
        }
    }

    [Fact]
    public void Indirect_segments_are_validated_after_fetching()
    {
        RequestLimits limits = Limits(BlkifProtocol.X86_64, 4096);
        Assert.Equal(RequestCheck.Ok, BlkifRequestParser.Decode(WireSlots.Indirect(BlkifProtocol.X86_64, BlkifOperation.Read, Id, 0, 20, [1]), limits, out BlkifRequestInfo request, new BlkifRequestSegment[11]));

        var segments = new BlkifRequestSegment[20];
        for (int i = 0; i < segments.Length; i++)
        {
            segments[i] = new BlkifRequestSegment { GrantRef = (uint)i, FirstSector = 0, LastSector = 7 };
        }

        BlkifRequestInfo good = request;
        Assert.Equal(RequestCheck.Ok, BlkifRequestParser.Validate(ref good, segments, limits));
        Assert.Equal(20L * 4096, good.Length);

        segments[19].LastSector = 8;
        BlkifRequestInfo beyondPage = request;
        Assert.Equal(RequestCheck.SegmentBeyondPage, BlkifRequestParser.Validate(ref beyondPage, segments, limits));

        segments[19].LastSector = 3;
        BlkifRequestInfo misaligned = request;
        Assert.Equal(RequestCheck.Misaligned, BlkifRequestParser.Validate(ref misaligned, segments, limits));

        // 256 pages of 4 KiB from sector 0 is exactly the disk; from sector 8 it is one page too many.
        var many = Enumerable.Repeat(new BlkifRequestSegment { GrantRef = 1, FirstSector = 0, LastSector = 7 }, 256).ToArray();
        BlkifRequestInfo whole = request with { SegmentCount = 256 };
        Assert.Equal(RequestCheck.Ok, BlkifRequestParser.Validate(ref whole, many, limits));
        BlkifRequestInfo past = request with { SegmentCount = 256, SectorNumber = 8 };
        Assert.Equal(RequestCheck.OutOfRange, BlkifRequestParser.Validate(ref past, many, limits));
    }

    [Theory]
    [InlineData(BlkifProtocol.X86_64, 512)]
    [InlineData(BlkifProtocol.X86_64, 4096)]
    [InlineData(BlkifProtocol.X86_32, 512)]
    [InlineData(BlkifProtocol.X86_32, 4096)]
    public void Random_slots_never_throw_and_accepted_ones_stay_inside_the_disk(BlkifProtocol p, int sectorSize)
    {
        var random = new Random(1234 + sectorSize + (int)p);
        RequestLimits limits = Limits(p, sectorSize, secureDiscard: true);
        byte[] slot = new byte[WireSlots.SlotSize(p)];
        var segments = new BlkifRequestSegment[BlkifLimits.MaxSegmentsPerRequest];
        int accepted = 0;
        for (int i = 0; i < 20_000; i++)
        {
            random.NextBytes(slot);

            // Bias towards the interesting space: known operations, small counts, small sectors.
            slot[0] = (byte)(random.Next(4) == 0 ? random.Next(256) : random.Next(7));
            if (random.Next(2) == 0)
            {
                slot[1] = (byte)random.Next(13);
                int sectorOffset = p == BlkifProtocol.X86_32 ? 12 : 16;
                BitConverter.TryWriteBytes(slot.AsSpan(sectorOffset), (ulong)random.Next(3000));
                int segmentBase = p == BlkifProtocol.X86_32 ? 20 : 24;
                for (int s = 0; s < 11; s++)
                {
                    slot[segmentBase + (s * 8) + 4] = (byte)random.Next(9);
                    slot[segmentBase + (s * 8) + 5] = (byte)random.Next(9);
                }
            }

            RequestCheck check = BlkifRequestParser.Parse(slot, limits, out BlkifRequestInfo request, segments);
            if (check == RequestCheck.Ok && !request.IsIndirect)
            {
                accepted++;
                Assert.InRange(request.Offset, 0, DiskBytes);
                Assert.InRange(request.Length, 0, DiskBytes - request.Offset);
                Assert.Equal(0, request.Offset % sectorSize);
                Assert.Equal(0, request.Length % sectorSize);
            }
        }

        Assert.True(accepted > 100, $"only {accepted} random slots were valid: the generator no longer explores valid requests");
    }
}
