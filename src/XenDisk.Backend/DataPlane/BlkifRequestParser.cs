using System.Runtime.InteropServices;
using XenDisk.Abi;
using XenDisk.Storage;

namespace XenDisk.Backend.DataPlane;

/// <summary>
/// The private copy of one request, made once from its ring slot (and, for an indirect request, from
/// its indirect pages). Nothing here points back into shared memory, so every check made on it holds
/// until the request completes, whatever the guest writes into the ring meanwhile.
/// </summary>
public struct BlkifRequestInfo
{
    /// <summary>The operation byte as the guest wrote it.</summary>
    public byte Operation;

    /// <summary>The operation the response echoes: the request's own, except that an indirect request
    /// is answered with its indirect_op (Linux blkback does so and blkfront checks it).</summary>
    public byte ResponseOperation;

    public ulong Id;

    /// <summary>First 512-byte sector (blkif.h: always 512-byte units, whatever "sector-size" says).</summary>
    public ulong SectorNumber;

    /// <summary>What the request does, for execution and statistics (meaningless for refused requests).</summary>
    public RingOperation Kind;

    /// <summary>Data segments; 0 for discard and for a flush or barrier without data.</summary>
    public int SegmentCount;

    /// <summary>BLKIF_OP_INDIRECT: the segments are in <see cref="IndirectPageCount"/> granted pages.</summary>
    public bool IsIndirect;

    public int IndirectPageCount;

    public BlkifIndirectRefArray IndirectGrantRefs;

    /// <summary>Discard: the "flag" byte (BLKIF_DISCARD_SECURE).</summary>
    public byte DiscardFlag;

    /// <summary>Discard: length in 512-byte sectors.</summary>
    public ulong DiscardSectors;

    /// <summary>Set by validation: the byte offset on the disk.</summary>
    public long Offset;

    /// <summary>Set by validation: bytes transferred or discarded.</summary>
    public long Length;

    /// <summary>Data moves from the guest to the disk (write, or a flush/barrier carrying data).</summary>
    public readonly bool WritesData => SegmentCount > 0 && Kind != RingOperation.Read;

    /// <summary>Earlier requests must complete first (barrier, flush).</summary>
    public readonly bool Drains => Kind is RingOperation.Barrier or RingOperation.Flush;

    public readonly bool IsSecureDiscard => (DiscardFlag & BlkifLimits.DiscardSecure) != 0;
}

/// <summary>What a request may do on this ring: the negotiated features and the disk as it is now.</summary>
public readonly record struct RequestLimits(
    BlkifProtocol Protocol,
    long DiskSizeBytes,
    int LogicalSectorSize,
    bool ReadOnly,
    bool Discard,
    bool SecureDiscard,
    int MaxIndirectSegments)
{
    /// <summary>Reads the disk's current <see cref="BlockDeviceInfo"/>: an online resize replaces it, and the next request sees the new size.</summary>
    public static RequestLimits For(BlkifProtocol protocol, NegotiatedFeatures features, BlockDeviceInfo disk) => new(
        protocol,
        disk.SizeBytes,
        disk.LogicalSectorSize,
        features.ReadOnly || disk.ReadOnly,
        features.Discard,
        features.SecureDiscard,
        Math.Clamp(features.MaxIndirectSegments, 0, BlkifLimits.MaxIndirectSegments));
}

/// <summary>The outcome of checking a request. Every refusal maps to one blkif status (<see cref="RequestChecks.ToStatus"/>).</summary>
public enum RequestCheck
{
    Ok = 0,

    // BLKIF_RSP_EOPNOTSUPP: well-formed, but not something this backend does.
    UnknownOperation,
    IndirectNotNegotiated,
    DiscardNotNegotiated,
    SecureDiscardNotNegotiated,

    // BLKIF_RSP_ERROR: the guest sent something malformed or not allowed.
    NoSegments,
    TooManySegments,
    BadIndirectOperation,
    SegmentSectorsReversed,
    SegmentBeyondPage,
    Misaligned,
    OutOfRange,
    ReadOnlyDevice,
    BadGrant,
}

public static class RequestChecks
{
    public static short ToStatus(this RequestCheck check) => check switch
    {
        RequestCheck.Ok => BlkifStatus.Okay,
        RequestCheck.UnknownOperation or RequestCheck.IndirectNotNegotiated
            or RequestCheck.DiscardNotNegotiated or RequestCheck.SecureDiscardNotNegotiated => BlkifStatus.EOpNotSupp,
        _ => BlkifStatus.Error,
    };
}

/// <summary>
/// Turns ring slot bytes into a validated <see cref="BlkifRequestInfo"/>: pure functions over private
/// memory, so that they can be tested against any byte pattern. The ring copies a slot out of shared
/// memory once and hands the copy here (blkback.c: "Apply all sanity checks to /private copy/ of request").
/// Two steps because an indirect request's segments live in pages the ring must fetch in between:
/// <see cref="Decode"/> reads the slot, <see cref="Validate"/> checks the segments and the range.
/// </summary>
public static class BlkifRequestParser
{
    /// <summary>
    /// Copies the fields of one slot (<see cref="RingGeometry.SlotSize"/> bytes of private memory) into
    /// <paramref name="request"/> and, for a direct request, its segments into <paramref name="segments"/>
    /// (room for at least <see cref="BlkifLimits.MaxSegmentsPerRequest"/>). Checks what the slot alone
    /// decides. <see cref="BlkifRequestInfo.Id"/> and <see cref="BlkifRequestInfo.ResponseOperation"/> are
    /// set whatever the outcome, so that a refusal can echo them.
    /// </summary>
    public static RequestCheck Decode(ReadOnlySpan<byte> slot, in RequestLimits limits, out BlkifRequestInfo request, Span<BlkifRequestSegment> segments)
    {
        request = default;
        bool is32 = limits.Protocol == BlkifProtocol.X86_32;
        byte operation = slot[0];
        request.Operation = operation;
        request.ResponseOperation = operation;

        switch (operation)
        {
            case BlkifOperation.Read:
            case BlkifOperation.Write:
            case BlkifOperation.WriteBarrier:
            case BlkifOperation.FlushDiskCache:
                return DecodeReadWrite(slot, is32, ref request, segments);
            case BlkifOperation.Discard:
                return DecodeDiscard(slot, is32, limits, ref request);
            case BlkifOperation.Indirect:
                return DecodeIndirect(slot, is32, limits, ref request);
            default:
                // Every request starts with operation and then id at the same place (blkif_request_other).
                request.Id = is32 ? MemoryMarshal.Read<BlkifRequest32>(slot).Id : MemoryMarshal.Read<BlkifRequest64>(slot).Id;
                return RequestCheck.UnknownOperation;
        }
    }

    /// <summary>
    /// Checks a decoded request against the disk: segment sector ranges, alignment to the logical sector
    /// size, the range in overflow-safe arithmetic, and write access. Sets <see cref="BlkifRequestInfo.Offset"/>
    /// and <see cref="BlkifRequestInfo.Length"/>. <paramref name="segments"/> holds exactly the request's segments.
    /// </summary>
    public static RequestCheck Validate(ref BlkifRequestInfo request, ReadOnlySpan<BlkifRequestSegment> segments, in RequestLimits limits)
    {
        bool writes = request.Kind is RingOperation.Write or RingOperation.Barrier or RingOperation.Discard
            || (request.Kind == RingOperation.Flush && request.SegmentCount > 0);
        if (writes && limits.ReadOnly)
        {
            return RequestCheck.ReadOnlyDevice;
        }

        // Sector numbers are 512-byte units; a 4096-byte disk can only address whole 4 KiB blocks,
        // so every boundary must be a multiple of 8 such units (blkif.h, "sector-size").
        int sectorsPerLogical = Math.Max(limits.LogicalSectorSize, BlkifLimits.SectorSize) >> BlkifLimits.SectorShift;
        ulong alignmentMask = (ulong)sectorsPerLogical - 1;
        ulong diskSectors = (ulong)Math.Max(limits.DiskSizeBytes, 0) >> BlkifLimits.SectorShift;

        ulong sectors;
        if (request.Kind == RingOperation.Discard)
        {
            sectors = request.DiscardSectors;
            if ((request.SectorNumber & alignmentMask) != 0 || (sectors & alignmentMask) != 0)
            {
                return RequestCheck.Misaligned;
            }
        }
        else if (request.SegmentCount == 0)
        {
            // A flush or barrier without data: the sector number means nothing.
            request.Offset = 0;
            request.Length = 0;
            return RequestCheck.Ok;
        }
        else
        {
            if (segments.Length != request.SegmentCount)
            {
                return RequestCheck.TooManySegments;
            }

            sectors = 0;
            for (int i = 0; i < segments.Length; i++)
            {
                BlkifRequestSegment segment = segments[i];
                if (segment.FirstSector > segment.LastSector)
                {
                    return RequestCheck.SegmentSectorsReversed;
                }

                if (segment.LastSector > BlkifLimits.MaxSectorInPage)
                {
                    return RequestCheck.SegmentBeyondPage;
                }

                if ((segment.FirstSector & alignmentMask) != 0 || (((ulong)segment.LastSector + 1) & alignmentMask) != 0)
                {
                    return RequestCheck.Misaligned;
                }

                // At most 4096 segments of 8 sectors: cannot overflow.
                sectors += (ulong)(segment.LastSector - segment.FirstSector + 1);
            }

            if ((request.SectorNumber & alignmentMask) != 0)
            {
                return RequestCheck.Misaligned;
            }
        }

        // start + count <= disk, written so that neither side can wrap.
        if (request.SectorNumber > diskSectors || sectors > diskSectors - request.SectorNumber)
        {
            return RequestCheck.OutOfRange;
        }

        // Both are at most the disk size in bytes, which is a long.
        request.Offset = (long)(request.SectorNumber << BlkifLimits.SectorShift);
        request.Length = (long)(sectors << BlkifLimits.SectorShift);
        return RequestCheck.Ok;
    }

    /// <summary>Decode and, for a direct request, Validate: the whole check for anything but an indirect request.</summary>
    public static RequestCheck Parse(ReadOnlySpan<byte> slot, in RequestLimits limits, out BlkifRequestInfo request, Span<BlkifRequestSegment> segments)
    {
        RequestCheck check = Decode(slot, limits, out request, segments);
        if (check != RequestCheck.Ok || request.IsIndirect)
        {
            return check;
        }

        return Validate(ref request, segments[..request.SegmentCount], limits);
    }

    /// <summary>Pages holding <paramref name="segmentCount"/> indirect segments.</summary>
    public static int IndirectPagesFor(int segmentCount) =>
        (segmentCount + BlkifLimits.SegmentsPerIndirectPage - 1) / BlkifLimits.SegmentsPerIndirectPage;

    private static RequestCheck DecodeReadWrite(ReadOnlySpan<byte> slot, bool is32, ref BlkifRequestInfo request, Span<BlkifRequestSegment> segments)
    {
        int count;
        if (is32)
        {
            BlkifRequest32 wire = MemoryMarshal.Read<BlkifRequest32>(slot);
            request.Id = wire.Id;
            request.SectorNumber = wire.SectorNumber;
            count = wire.NrSegments;
            if (count <= BlkifLimits.MaxSegmentsPerRequest)
            {
                ((ReadOnlySpan<BlkifRequestSegment>)wire.Segments)[..count].CopyTo(segments);
            }
        }
        else
        {
            BlkifRequest64 wire = MemoryMarshal.Read<BlkifRequest64>(slot);
            request.Id = wire.Id;
            request.SectorNumber = wire.SectorNumber;
            count = wire.NrSegments;
            if (count <= BlkifLimits.MaxSegmentsPerRequest)
            {
                ((ReadOnlySpan<BlkifRequestSegment>)wire.Segments)[..count].CopyTo(segments);
            }
        }

        request.Kind = request.Operation switch
        {
            BlkifOperation.Read => RingOperation.Read,
            BlkifOperation.Write => RingOperation.Write,
            BlkifOperation.WriteBarrier => RingOperation.Barrier,
            _ => RingOperation.Flush,
        };

        if (count > BlkifLimits.MaxSegmentsPerRequest)
        {
            return RequestCheck.TooManySegments;
        }

        // A flush or barrier may carry no data; a read or write must.
        if (count == 0 && request.Kind is RingOperation.Read or RingOperation.Write)
        {
            return RequestCheck.NoSegments;
        }

        request.SegmentCount = count;
        return RequestCheck.Ok;
    }

    private static RequestCheck DecodeDiscard(ReadOnlySpan<byte> slot, bool is32, in RequestLimits limits, ref BlkifRequestInfo request)
    {
        if (is32)
        {
            BlkifRequestDiscard32 wire = MemoryMarshal.Read<BlkifRequestDiscard32>(slot);
            request.Id = wire.Id;
            request.SectorNumber = wire.SectorNumber;
            request.DiscardSectors = wire.NrSectors;
            request.DiscardFlag = wire.Flag;
        }
        else
        {
            BlkifRequestDiscard64 wire = MemoryMarshal.Read<BlkifRequestDiscard64>(slot);
            request.Id = wire.Id;
            request.SectorNumber = wire.SectorNumber;
            request.DiscardSectors = wire.NrSectors;
            request.DiscardFlag = wire.Flag;
        }

        request.Kind = RingOperation.Discard;
        if (!limits.Discard)
        {
            return RequestCheck.DiscardNotNegotiated;
        }

        // Linux blkback answers a secure discard the device cannot do with EOPNOTSUPP.
        if (request.IsSecureDiscard && !limits.SecureDiscard)
        {
            return RequestCheck.SecureDiscardNotNegotiated;
        }

        return RequestCheck.Ok;
    }

    private static RequestCheck DecodeIndirect(ReadOnlySpan<byte> slot, bool is32, in RequestLimits limits, ref BlkifRequestInfo request)
    {
        byte indirectOperation;
        int count;
        if (is32)
        {
            BlkifRequestIndirect32 wire = MemoryMarshal.Read<BlkifRequestIndirect32>(slot);
            request.Id = wire.Id;
            request.SectorNumber = wire.SectorNumber;
            indirectOperation = wire.IndirectOperation;
            count = wire.NrSegments;
            request.IndirectGrantRefs = wire.IndirectGrantRefs;
        }
        else
        {
            BlkifRequestIndirect64 wire = MemoryMarshal.Read<BlkifRequestIndirect64>(slot);
            request.Id = wire.Id;
            request.SectorNumber = wire.SectorNumber;
            indirectOperation = wire.IndirectOperation;
            count = wire.NrSegments;
            request.IndirectGrantRefs = wire.IndirectGrantRefs;
        }

        request.IsIndirect = true;
        request.ResponseOperation = indirectOperation;
        if (limits.MaxIndirectSegments == 0)
        {
            return RequestCheck.IndirectNotNegotiated;
        }

        switch (indirectOperation)
        {
            case BlkifOperation.Read:
                request.Kind = RingOperation.Read;
                break;
            case BlkifOperation.Write:
                request.Kind = RingOperation.Write;
                break;
            default:
                return RequestCheck.BadIndirectOperation;
        }

        if (count == 0)
        {
            return RequestCheck.NoSegments;
        }

        if (count > limits.MaxIndirectSegments)
        {
            return RequestCheck.TooManySegments;
        }

        int pages = IndirectPagesFor(count);
        if (pages > BlkifLimits.MaxIndirectPagesPerRequest)
        {
            return RequestCheck.TooManySegments;
        }

        request.SegmentCount = count;
        request.IndirectPageCount = pages;
        return RequestCheck.Ok;
    }
}
