using Tmds.Linux;
using XenDisk.Cow.Overlays;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Bitmap;

/// <summary>The flat bitmap overlay (docs/BITMAP-FORMAT.md) as an <see cref="OverlayFormat"/>.</summary>
internal sealed partial class BitmapOverlayFormat : OverlayFormat
{
    public static readonly BitmapOverlayFormat Instance = new();

    /// <summary>Maps of files are read in pieces of this size (the whole map of a 256 GiB disk at 4 KiB grains is 16 MiB).</summary>
    private const int MapChunkBytes = 1024 * 1024;

    private BitmapOverlayFormat()
    {
    }

    public override string Name => "bitmap";

    public override string UnitOptionName => "grain";

    public override bool Recognises(ReadOnlySpan<byte> firstBytes) => firstBytes.StartsWith(BitmapFormat.Magic);

    /// <summary>A bitmap overlay has no reference counts, so it cannot leak: <see cref="OverlayRepair.Leaks"/> has nothing to repair.</summary>
    public override OverlayCheckReport Check(IBlockDevice image, OverlayRepair repair, Action<long, long>? progress = null)
    {
        BitmapCheckReport report = BitmapChecker.Check(image, repair == OverlayRepair.All);
        if (report.Header == null)
        {
            throw new StorageException(string.Join("; ", report.Problems));
        }
        progress?.Invoke(report.Header.GrainCount, report.Header.GrainCount);
        return new OverlayCheckReport
        {
            Corruptions = report.Repaired ? 0 : report.Problems.Count,
            CorruptionsFixed = report.Repaired ? report.Problems.Count : 0,
            Messages = report.Problems,
            Repaired = report.Repaired,
        };
    }

    /// <summary>
    /// Decodes the grain map as docs/BITMAP-FORMAT.md lays it out (grain g at bits 2*(g mod 4) of map
    /// byte g/4), after the header has been validated by <see cref="BitmapOverlay.ReadHeader"/>.
    /// Progress is (grains done, grains in all).
    /// </summary>
    public override IReadOnlyList<OverlayExtent> Map(IBlockDevice image, Action<long, long>? progress = null)
    {
        BitmapHeader header = BitmapOverlay.ReadHeader(image);
        List<OverlayExtent> extents = [];
        long grains = header.GrainCount;
        long grainSize = header.GrainSize;
        byte[] chunk = new byte[MapChunkBytes];
        for (long firstGrain = 0; firstGrain < grains; firstGrain += (long)MapChunkBytes * BitmapFormat.GrainsPerByte)
        {
            long bytes = Math.Min(MapChunkBytes, (grains - firstGrain + BitmapFormat.GrainsPerByte - 1) / BitmapFormat.GrainsPerByte);
            // The map length is a multiple of 4 KiB and the device's sectors are 512 bytes: round the read up.
            int readLength = (int)((bytes + 511) / 512 * 512);
            IoStatus status = image.ReadAt(header.BitmapOffset + firstGrain / BitmapFormat.GrainsPerByte, chunk.AsSpan(0, readLength));
            if (status != IoStatus.Ok)
            {
                throw new StorageException($"cannot read the grain map of '{image.Info.Description}' ({status.Describe()})");
            }
            long lastGrain = Math.Min(grains, firstGrain + bytes * BitmapFormat.GrainsPerByte);
            for (long grain = firstGrain; grain < lastGrain; grain++)
            {
                var state = (GrainState)((chunk[(int)((grain - firstGrain) / BitmapFormat.GrainsPerByte)] >> (int)(2 * (grain % BitmapFormat.GrainsPerByte))) & 3);
                long offset = grain * grainSize;
                BitmapOverlay.AppendGrain(extents, state, offset, Math.Min(grainSize, header.VirtualSize - offset), header.BaseSize, header.DataOffset);
            }
            progress?.Invoke(lastGrain, grains);
        }
        return extents;
    }

    /// <summary>A bitmap overlay records its base by absolute path only (docs/BITMAP-FORMAT.md, base name).</summary>
    public override OverlayBase? RecordedBase(IBlockDevice image, string imagePath)
    {
        BitmapHeader header = BitmapOverlay.ReadHeader(image);
        string name = header.BaseName;
        if (name.Length == 0 || !Path.IsPathFullyQualified(name))
        {
            if (header.IsStandalone)
            {
                return null;
            }
            throw new StorageException($"The bitmap overlay '{imagePath}' records no absolute base path (\"{name}\"), so its base cannot be found.");
        }
        return new OverlayBase(name, Path.GetFullPath(name), NeededForReads: !header.IsStandalone);
    }

    public override OverlayOperationResult Hydrate(string imagePath, OverlayHydrateOptions? options = null, OverlayFileOptions? files = null, CancellationToken cancellationToken = default)
    {
        using IOverlayImage overlay = OpenFile(imagePath, files ?? new OverlayFileOptions(), readOnly: false, writableBase: false);
        return Finish(overlay, overlay.Hydrate(options, cancellationToken), "hydrating", imagePath, "; run it again to resume");
    }

    public override OverlayOperationResult Commit(string imagePath, OverlayCommitOptions? options = null, OverlayFileOptions? files = null, CancellationToken cancellationToken = default)
    {
        options ??= new OverlayCommitOptions();
        using IOverlayImage overlay = OpenFile(imagePath, files ?? new OverlayFileOptions(), readOnly: !options.EmptyOverlay, writableBase: true);
        OverlayOperationResult result;
        try
        {
            result = overlay.Commit(options, cancellationToken);
        }
        catch (InvalidOperationException e)
        {
            throw new StorageException($"bitmap: committing '{imagePath}': {e.Message}", inner: e);
        }
        return Finish(overlay, result, "committing", imagePath, "");
    }

    /// <summary>
    /// Opens the overlay file and, unless it is standalone and only read from, the base it records,
    /// which <see cref="OverlayFileOptions.BackingPolicy"/> must allow. Both are locked as QEMU locks images.
    /// </summary>
    private static BitmapOverlay OpenFile(string imagePath, OverlayFileOptions files, bool readOnly, bool writableBase)
    {
        string fullPath = Path.GetFullPath(imagePath);
        IBlockDevice cow = ImageLocks.OpenRaw(fullPath, readOnly);
        IBlockDevice? baseDevice = null;
        try
        {
            BitmapHeader header = BitmapOverlay.ReadHeader(cow);
            var options = new BitmapOverlayOptions { ReadOnly = readOnly, Policy = files.Policy, OwnsDevices = true };
            if (header.IsStandalone && !writableBase)
            {
                // Hydrated: every grain is in the overlay, so no base is opened at all.
                return BitmapOverlay.Open(cow, null, options);
            }
            OverlayBase recorded = Instance.RecordedBase(cow, fullPath)
                ?? throw new StorageException($"The bitmap overlay '{imagePath}' records no base.");
            if (!files.BackingPolicy.Allows(recorded.FullPath, recorded.Name))
            {
                throw new StorageException($"bitmap: the base '{recorded.FullPath}' of '{imagePath}' is not allowed by the backing file policy");
            }
            baseDevice = ImageLocks.OpenRaw(recorded.FullPath, readOnly: !writableBase);
            return BitmapOverlay.Open(cow, baseDevice, options);
        }
        catch
        {
            baseDevice?.Dispose();
            cow.Dispose();
            throw;
        }
    }

    /// <summary>Closes the overlay cleanly and turns a failure into a <see cref="StorageException"/>.</summary>
    private static OverlayOperationResult Finish(IOverlayImage overlay, OverlayOperationResult result, string what, string imagePath, string advice)
    {
        IoStatus close = overlay.Info.ReadOnly ? IoStatus.Ok : overlay.Close();
        if (!result.Succeeded)
        {
            throw new StorageException($"{what} '{imagePath}' failed ({result.Status.Describe()}){advice}", result.Status == IoStatus.NoSpace ? LibC.ENOSPC : LibC.EIO);
        }
        if (close != IoStatus.Ok)
        {
            throw new StorageException($"closing '{imagePath}' after {what} failed ({close.Describe()})", close == IoStatus.NoSpace ? LibC.ENOSPC : LibC.EIO);
        }
        return result;
    }
}
