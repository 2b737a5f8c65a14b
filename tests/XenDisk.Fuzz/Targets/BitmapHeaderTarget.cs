using System.Buffers.Binary;
using XenDisk.Cow.Bitmap;
using XenDisk.Fuzz.Devices;
using XenDisk.Storage;

namespace XenDisk.Fuzz.Targets;

/// <summary>
/// The start of a bitmap overlay (docs/BITMAP-FORMAT.md): the 4 KiB header region and the grain map
/// after it; the data area is the sparse rest of the device, as large as the header says. Each input
/// is tried twice: as it is (which mostly exercises the checksum refusal), then with its checksum made
/// right so that mutations reach the field checks, the map scan, I/O, the checker and a reopen.
/// Findings: any exception but <see cref="StorageException"/> at open, any exception from
/// <see cref="BitmapHeader.TryParse"/>, writes outside the device or to the base, and acknowledged
/// writes that do not read back.
/// </summary>
public sealed class BitmapHeaderTarget : FuzzTarget
{
    /// <summary>Beyond this, a declared device is not built (the sparse device would cost nothing, but the engine's own map would).</summary>
    private const long LargestDevice = 1L << 40;

    /// <summary>The map is held in memory whole (up to 1 GiB by design, BitmapFormat.MaximumMapLength); fuzz runs stop well short of that.</summary>
    private const long LargestMap = 16L << 20;

    private const int IoSize = 8192;

    public override string Name => "bitmap";

    public override string Description => "a bitmap overlay's header and map: parse, open, read, write, check, reopen";

    public override FuzzOutcome Run(ReadOnlySpan<byte> input)
    {
        byte[] region = new byte[Math.Max(input.Length, BitmapFormat.HeaderRegionSize)];
        input.CopyTo(region);
        long deviceSize = DeclaredDeviceSize(region);
        BitmapHeader.TryParse(region, deviceSize, out _);
        FuzzOutcome outcome = Open(region, deviceSize);

        uint headerSize = BinaryPrimitives.ReadUInt32LittleEndian(region.AsSpan(12));
        if (headerSize is >= BitmapFormat.HeaderSize and <= BitmapFormat.HeaderRegionSize && headerSize % 512 == 0)
        {
            // The checksum as the format defines it: CRC32C of the header with the checksum field taken as zero.
            BinaryPrimitives.WriteUInt32LittleEndian(region.AsSpan(16), 0);
            BinaryPrimitives.WriteUInt32LittleEndian(region.AsSpan(16), BitmapFormat.Crc32C(region.AsSpan(0, (int)headerSize)));
            outcome = Open(region, deviceSize) == FuzzOutcome.Accepted ? FuzzOutcome.Accepted : outcome;
        }
        return outcome;
    }

    private static long DeclaredDeviceSize(ReadOnlySpan<byte> region)
    {
        long dataOffset = BinaryPrimitives.ReadInt64LittleEndian(region[64..]);
        long dataLength = BinaryPrimitives.ReadInt64LittleEndian(region[72..]);
        bool plausible = dataOffset is >= 0 and <= LargestDevice && dataLength is >= 0 and <= LargestDevice;
        return Math.Max(region.Length, plausible ? dataOffset + dataLength : 0);
    }

    private static FuzzOutcome Open(byte[] region, long deviceSize)
    {
        if (BitmapHeader.TryParse(region, deviceSize, out BitmapHeader? parsed) is null && parsed!.BitmapLength > LargestMap)
        {
            return FuzzOutcome.Refused;
        }
        long baseSize = parsed is { BaseSize: > 0 and <= LargestDevice } ? parsed.BaseSize : 1 << 20;
        FuzzImageDevice cow = new("bitmap overlay", region, deviceSize, deviceSize, readOnly: false);
        FuzzImageDevice baseDevice = new("base", [], baseSize, baseSize, readOnly: true);
        BitmapOverlayOptions options = new() { OwnsDevices = false };
        BitmapOverlay overlay;
        try
        {
            overlay = BitmapOverlay.Open(cow, baseDevice, options);
        }
        catch (StorageException)
        {
            FuzzImageDevice.ThrowIfViolated(cow, baseDevice);
            return FuzzOutcome.Refused;
        }

        List<(long Offset, byte[] Data)> acknowledged = [];
        using (overlay)
        {
            long size = overlay.Info.SizeBytes;
            byte[] buffer = new byte[IoSize];
            if (size >= IoSize)
            {
                overlay.ReadAt(0, buffer);
                overlay.ReadAt((size - IoSize) & ~511L, buffer);
                long[] offsets = [0, (size / 2) & ~511L, (size - IoSize) & ~511L];
                for (int i = 0; i < offsets.Length; i++)
                {
                    byte[] data = new byte[IoSize];
                    data.AsSpan().Fill((byte)(0x60 + i));
                    // A failed write leaves its range undefined, so what was acknowledged there is no longer expected.
                    acknowledged.RemoveAll(w => w.Offset < offsets[i] + IoSize && offsets[i] < w.Offset + IoSize);
                    if (overlay.WriteAt(offsets[i], data) == IoStatus.Ok)
                    {
                        acknowledged.Add((offsets[i], data));
                    }
                }
                long discarded = size / 4 & ~511L;
                acknowledged.RemoveAll(w => w.Offset < discarded + 4096 && discarded < w.Offset + IoSize);
                overlay.Discard(discarded, 4096, false);
                foreach ((long offset, byte[] data) in acknowledged)
                {
                    FuzzFindingException.Check(overlay.ReadAt(offset, buffer) != IoStatus.Ok || buffer.AsSpan().SequenceEqual(data),
                        $"the write at {offset} acknowledged by the open overlay reads back differently");
                }
            }
            if (overlay.Flush() != IoStatus.Ok)
            {
                acknowledged.Clear();
            }
        }
        FuzzImageDevice.ThrowIfViolated(cow, baseDevice);
        BitmapChecker.Check(cow);
        BitmapChecker.Check(cow, repair: true);
        FuzzImageDevice.ThrowIfViolated(cow, baseDevice);
        if (acknowledged.Count == 0)
        {
            return FuzzOutcome.Accepted;
        }
        using BitmapOverlay reopened = BitmapOverlay.Open(cow, baseDevice, options with { ReadOnly = true });
        byte[] readBack = new byte[IoSize];
        foreach ((long offset, byte[] data) in acknowledged)
        {
            FuzzFindingException.Check(reopened.ReadAt(offset, readBack) == IoStatus.Ok && readBack.AsSpan().SequenceEqual(data),
                $"the write at {offset}, acknowledged and flushed, does not read back after reopening the overlay");
        }
        FuzzImageDevice.ThrowIfViolated(cow, baseDevice);
        return FuzzOutcome.Accepted;
    }
}
