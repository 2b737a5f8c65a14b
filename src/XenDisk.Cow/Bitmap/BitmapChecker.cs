using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Bitmap;

/// <summary>What <see cref="BitmapChecker.Check"/> found (and, with repair, fixed).</summary>
public sealed record BitmapCheckReport
{
    /// <summary>The header, or null when it could not be read or failed validation.</summary>
    public BitmapHeader? Header { get; init; }

    /// <summary>Grain counts per state, as found (before any repair).</summary>
    public GrainCounts Counts { get; init; }

    /// <summary>One line per problem found, for operators.</summary>
    public IReadOnlyList<string> Problems { get; init; } = [];

    /// <summary>The header's dirty flag was set: the last session did not close cleanly (informational; not a problem).</summary>
    public bool WasDirty { get; init; }

    /// <summary>Repair was requested and every problem found was fixed on disk.</summary>
    public bool Repaired { get; init; }

    public bool IsClean => Problems.Count == 0;
}

/// <summary>
/// Validates a bitmap overlay without opening it for I/O: the header (every field, as
/// <see cref="BitmapOverlay.Open"/> does) and the map (no grain in the invalid state, no bits past
/// the last grain, no grain left in the BASE state of a standalone overlay, no corrupt flag). With
/// repair it fixes what can be fixed: invalid grains become DISCARDED (they read zeros: no stale or
/// foreign data is exposed), bits past the end are cleared, a wrong standalone flag and the corrupt
/// flag are cleared. A header that fails validation cannot be repaired (nothing in it can be trusted).
/// The overlay must not be open elsewhere while this runs.
/// </summary>
public static class BitmapChecker
{
    public static BitmapCheckReport Check(IBlockDevice cowDevice, bool repair = false)
    {
        ArgumentNullException.ThrowIfNull(cowDevice);
        string? headerProblem = BitmapOverlay.TryReadHeader(cowDevice, out BitmapHeader? header);
        if (headerProblem is not null)
        {
            return new BitmapCheckReport { Problems = [$"header: {headerProblem}"] };
        }
        List<string> problems = [];
        ulong unknown = header!.IncompatibleFeatures & ~BitmapFormat.KnownIncompatible;
        if (unknown != 0)
        {
            // A newer format: this checker does not know what else the map may mean; leave it alone.
            return new BitmapCheckReport { Header = header, Problems = [$"header: unknown incompatible features 0x{unknown:x} (made by a newer version)"] };
        }
        if ((header.IncompatibleFeatures & BitmapFormat.IncompatibleTransient) != 0)
        {
            return new BitmapCheckReport { Header = header, Problems = ["header: a transient overlay, whose contents were never persisted; it cannot be repaired"] };
        }
        if ((header.IncompatibleFeatures & BitmapFormat.IncompatibleCorrupt) != 0)
        {
            problems.Add("header: the corrupt flag is set");
        }

        byte[] map = new byte[header.BitmapLength];
        try
        {
            BitmapOverlay.LoadMap(cowDevice, header, map);
        }
        catch (StorageException e)
        {
            return new BitmapCheckReport { Header = header, Problems = [$"map: {e.Message}"] };
        }
        long grains = header.GrainCount;
        GrainCounts counts = GrainCounts.Scan(map, grains);
        if (counts.Invalid != 0)
        {
            problems.Add($"map: {counts.Invalid} grains are both mapped and discarded (the invalid state 3)");
        }
        if (counts.NonZeroBytesBeyondEnd != 0)
        {
            problems.Add($"map: {counts.NonZeroBytesBeyondEnd} bytes have bits set past the last grain ({grains})");
        }
        bool standaloneWrong = header.IsStandalone && counts.Base != 0;
        if (standaloneWrong)
        {
            problems.Add($"header: marked standalone, but {counts.Base} grains still refer to the base");
        }

        BitmapCheckReport report = new() { Header = header, Counts = counts, Problems = problems, WasDirty = header.IsDirty };
        if (!repair || problems.Count == 0)
        {
            return report;
        }
        if (cowDevice.Info.ReadOnly)
        {
            return report with { Problems = [.. problems, "repair: the device is read-only"] };
        }
        IoStatus status = Repair(cowDevice, header, map, grains, standaloneWrong);
        return status == IoStatus.Ok
            ? report with { Repaired = true }
            : report with { Problems = [.. problems, $"repair: writing failed ({status.Describe()})"] };
    }

    private static IoStatus Repair(IBlockDevice cowDevice, BitmapHeader header, byte[] map, long grains, bool standaloneWrong)
    {
        bool[] changedBlocks = new bool[map.Length / BitmapFormat.MapBlockSize];
        for (long grain = 0; grain < grains; grain++)
        {
            int index = (int)(grain >> 2);
            int shift = ((int)grain & 3) * 2;
            if (((map[index] >> shift) & 3) == (int)GrainState.Invalid)
            {
                map[index] = (byte)((map[index] & ~(3 << shift)) | ((int)GrainState.Discarded << shift));
                changedBlocks[index / BitmapFormat.MapBlockSize] = true;
            }
        }
        int tail = (int)(grains % BitmapFormat.GrainsPerByte);
        long firstClear = grains / BitmapFormat.GrainsPerByte;
        if (tail != 0)
        {
            byte kept = (byte)(map[firstClear] & ((1 << (tail * 2)) - 1));
            if (kept != map[firstClear])
            {
                map[firstClear] = kept;
                changedBlocks[firstClear / BitmapFormat.MapBlockSize] = true;
            }
            firstClear++;
        }
        for (long i = firstClear; i < map.Length; i++)
        {
            if (map[i] != 0)
            {
                map[i] = 0;
                changedBlocks[i / BitmapFormat.MapBlockSize] = true;
            }
        }

        using AlignedBlock block = new(BitmapFormat.MapBlockSize);
        for (int b = 0; b < changedBlocks.Length; b++)
        {
            if (!changedBlocks[b])
            {
                continue;
            }
            map.AsSpan(b * BitmapFormat.MapBlockSize, BitmapFormat.MapBlockSize).CopyTo(block.Span);
            IoBuffer buffer = block.AsIoBuffer(0, BitmapFormat.MapBlockSize);
            IoStatus status = cowDevice.Write(header.BitmapOffset + (long)b * BitmapFormat.MapBlockSize, new ReadOnlySpan<IoBuffer>(in buffer));
            if (status != IoStatus.Ok)
            {
                return status;
            }
        }
        // The repaired map must be durable before the header stops calling the overlay corrupt.
        IoStatus flushed = cowDevice.Flush();
        if (flushed != IoStatus.Ok)
        {
            return flushed;
        }
        ulong compatible = header.CompatibleFeatures & ~(standaloneWrong ? BitmapFormat.CompatibleStandalone : 0);
        BitmapHeader repaired = header with { IncompatibleFeatures = header.IncompatibleFeatures & ~BitmapFormat.IncompatibleCorrupt, CompatibleFeatures = compatible };
        using AlignedBlock headerBlock = new(BitmapFormat.HeaderRegionSize);
        repaired.WriteTo(headerBlock.Span);
        int sector = Math.Max(BitmapFormat.HeaderSize, cowDevice.Info.LogicalSectorSize);
        IoBuffer headerBuffer = headerBlock.AsIoBuffer(0, sector);
        IoStatus written = cowDevice.Write(0, new ReadOnlySpan<IoBuffer>(in headerBuffer));
        return written == IoStatus.Ok ? cowDevice.Flush() : written;
    }
}
