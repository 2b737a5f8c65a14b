using System.Buffers.Binary;
using System.Runtime.InteropServices;
using XenDisk.Abi;
using XenDisk.Backend.DataPlane;

namespace XenDisk.Fuzz.Targets;

/// <summary>
/// One request slot as a guest's blkfront writes it, parsed the way the ring does: Decode the private
/// copy of the slot, fetch an indirect request's segments (here from the input, where the ring copies
/// them from the granted pages), then Validate. Input layout:
/// <code>
///   0      1  what the ring negotiated: bit 0 x86_32 layout, 1 read-only, 2 discard, 3 secure discard,
///             4 4096-byte logical sectors, 5-6 max indirect segments (0, 32, 256, 4096)
///   1      8  disk size in bytes (little-endian; the top bit is dropped)
///   9   slot  the request slot (112 bytes x86_64, 108 x86_32; zero-padded)
///   ...       an indirect request's segments, 8 bytes each (zero-padded)
/// </code>
/// The parser never throws; findings are an exception or an accepted request that breaks what the
/// data plane relies on (inside the disk, aligned, lengths that match the segments, no write to a
/// read-only disk, no feature that was not negotiated).
/// </summary>
public sealed class BlkifRequestTarget : FuzzTarget
{
    private const int PrefixSize = 9;

    private static readonly int[] IndirectChoices = [0, 32, 256, BlkifLimits.MaxIndirectSegments];

    public override string Name => "blkif";

    public override string Description => "one blkif ring slot (+ indirect segments): decode and validate";

    public override FuzzOutcome Run(ReadOnlySpan<byte> input)
    {
        byte flags = input.Length > 0 ? input[0] : (byte)0;
        Span<byte> sizeBytes = stackalloc byte[8];
        sizeBytes.Clear();
        if (input.Length > 1)
        {
            input[1..Math.Min(input.Length, PrefixSize)].CopyTo(sizeBytes);
        }
        BlkifProtocol protocol = (flags & 1) != 0 ? BlkifProtocol.X86_32 : BlkifProtocol.X86_64;
        RequestLimits limits = new(
            protocol,
            (long)(BinaryPrimitives.ReadUInt64LittleEndian(sizeBytes) & long.MaxValue),
            (flags & 16) != 0 ? 4096 : 512,
            ReadOnly: (flags & 2) != 0,
            Discard: (flags & 4) != 0,
            SecureDiscard: (flags & 8) != 0,
            MaxIndirectSegments: IndirectChoices[(flags >> 5) & 3]);

        int slotSize = RingGeometry.SlotSize(protocol);
        byte[] slot = new byte[slotSize];
        ReadOnlySpan<byte> rest = input.Length > PrefixSize ? input[PrefixSize..] : [];
        rest[..Math.Min(rest.Length, slotSize)].CopyTo(slot);
        ReadOnlySpan<byte> indirectPages = rest.Length > slotSize ? rest[slotSize..] : [];

        BlkifRequestSegment[] segments = new BlkifRequestSegment[BlkifLimits.MaxIndirectSegments];
        RequestCheck check = BlkifRequestParser.Parse(slot, limits, out BlkifRequestInfo request, segments);
        if (check == RequestCheck.Ok && request.IsIndirect)
        {
            FuzzFindingException.Check(request.SegmentCount > 0 && request.SegmentCount <= limits.MaxIndirectSegments
                && request.IndirectPageCount == BlkifRequestParser.IndirectPagesFor(request.SegmentCount)
                && request.IndirectPageCount <= BlkifLimits.MaxIndirectPagesPerRequest,
                $"an indirect request of {request.SegmentCount} segments in {request.IndirectPageCount} pages was accepted (limit {limits.MaxIndirectSegments})");
            Span<byte> fetched = MemoryMarshal.AsBytes(segments.AsSpan(0, request.SegmentCount));
            fetched.Clear();
            indirectPages[..Math.Min(indirectPages.Length, fetched.Length)].CopyTo(fetched);
            check = BlkifRequestParser.Validate(ref request, segments.AsSpan(0, request.SegmentCount), limits);
        }
        FuzzFindingException.Check(check.ToStatus() != BlkifStatus.Okay || check == RequestCheck.Ok, $"{check} answers the guest with success");
        if (check != RequestCheck.Ok)
        {
            return FuzzOutcome.Refused;
        }

        ulong sectors = 0;
        foreach (BlkifRequestSegment segment in segments.AsSpan(0, request.SegmentCount))
        {
            FuzzFindingException.Check(segment.FirstSector <= segment.LastSector && segment.LastSector <= BlkifLimits.MaxSectorInPage,
                $"a segment of sectors {segment.FirstSector}..{segment.LastSector} was accepted");
            sectors += (ulong)(segment.LastSector - segment.FirstSector + 1);
        }
        bool writes = request.Kind is RingOperation.Write or RingOperation.Barrier or RingOperation.Discard || request.WritesData;
        FuzzFindingException.Check(!(writes && limits.ReadOnly), $"a {request.Kind} was accepted on a read-only disk");
        FuzzFindingException.Check(request.Kind != RingOperation.Discard || limits.Discard, "a discard was accepted without feature-discard");
        FuzzFindingException.Check(!request.IsSecureDiscard || request.Kind != RingOperation.Discard || limits.SecureDiscard, "a secure discard was accepted without discard-secure");
        FuzzFindingException.Check(request.SegmentCount <= (request.IsIndirect ? limits.MaxIndirectSegments : BlkifLimits.MaxSegmentsPerRequest),
            $"{request.SegmentCount} segments were accepted");
        FuzzFindingException.Check(request.Offset >= 0 && request.Length >= 0 && request.Offset <= limits.DiskSizeBytes - request.Length,
            $"the range {request.Offset}+{request.Length} was accepted on a {limits.DiskSizeBytes}-byte disk");
        FuzzFindingException.Check(request.Offset % limits.LogicalSectorSize == 0 && request.Length % limits.LogicalSectorSize == 0,
            $"the range {request.Offset}+{request.Length} is not aligned to {limits.LogicalSectorSize}-byte sectors");
        if (request.Kind is RingOperation.Read or RingOperation.Write)
        {
            FuzzFindingException.Check(request.Length > 0 && (ulong)request.Length == sectors << BlkifLimits.SectorShift,
                $"a {request.Kind} of {request.Length} bytes was accepted for segments of {sectors} sectors");
        }
        else if (request.Kind == RingOperation.Discard)
        {
            FuzzFindingException.Check((ulong)request.Length == request.DiscardSectors << BlkifLimits.SectorShift,
                $"a discard of {request.DiscardSectors} sectors became {request.Length} bytes");
        }

        return FuzzOutcome.Accepted;
    }
}
