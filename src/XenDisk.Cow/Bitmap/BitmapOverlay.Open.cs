using XenDisk.Cow.Storage;
using XenDisk.Cow.Policies;
using XenDisk.Storage;

namespace XenDisk.Cow.Bitmap;

public sealed partial class BitmapOverlay
{
    /// <summary>The map is read in pieces of this size at open.</summary>
    private const int MapReadChunk = 1024 * 1024;

    /// <summary>
    /// The smallest CoW device that holds an overlay of a <paramref name="virtualSize"/>-byte disk with
    /// <paramref name="grainSize"/>-byte grains: header, map, 1 MiB alignment, then the whole disk.
    /// </summary>
    public static long RequiredCowSize(long virtualSize, int grainSize = BitmapFormat.DefaultGrainSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(virtualSize);
        if (!BitmapFormat.IsGrainSize(grainSize))
        {
            throw new ArgumentOutOfRangeException(nameof(grainSize), grainSize, "The grain size must be a power of two from 512 to 65536.");
        }
        return BitmapHeader.ForNewOverlay(virtualSize, grainSize, 0, "", transient: false).RequiredDeviceSize;
    }

    /// <summary>
    /// Makes a new, empty overlay of <paramref name="baseDevice"/> on <paramref name="cowDevice"/> and opens it.
    /// Persistent policies zero the map and write the header, flushing in between so that a valid
    /// header never points at an unwritten map. A transient overlay writes only a header marked
    /// transient (so that the scribbled-on device is never mistaken for an overlay later) and no flush.
    /// Throws <see cref="StorageException"/> naming the problem (device too small, bad grain size, ...).
    /// </summary>
    public static BitmapOverlay Create(IBlockDevice cowDevice, IBlockDevice baseDevice, BitmapCreateOptions? create = null, BitmapOverlayOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(cowDevice);
        ArgumentNullException.ThrowIfNull(baseDevice);
        create ??= new BitmapCreateOptions();
        options ??= new BitmapOverlayOptions();
        BlockDeviceInfo cowInfo = cowDevice.Info;
        BlockDeviceInfo baseInfo = baseDevice.Info;
        if (cowInfo.ReadOnly || options.ReadOnly)
        {
            throw new StorageException($"Cannot create a bitmap overlay on {cowInfo.Description}: the device is read-only.");
        }
        int grainSize = create.GrainSize;
        if (!BitmapFormat.IsGrainSize(grainSize))
        {
            throw new StorageException($"Cannot create a bitmap overlay: grain size {grainSize} is not a power of two from {BitmapFormat.MinimumGrainSize} to {BitmapFormat.MaximumGrainSize}.");
        }
        long virtualSize = create.VirtualSize == 0 ? baseInfo.SizeBytes : create.VirtualSize;
        if (virtualSize <= 0 || virtualSize < baseInfo.SizeBytes || virtualSize % 512 != 0)
        {
            throw new StorageException($"Cannot create a bitmap overlay: virtual size {virtualSize} must be a positive multiple of 512 and at least the base's {baseInfo.SizeBytes} bytes.");
        }
        if (System.Text.Encoding.UTF8.GetByteCount(create.BaseName) > BitmapFormat.MaximumBaseNameLength || create.BaseName.Contains('\0', StringComparison.Ordinal))
        {
            throw new StorageException($"Cannot create a bitmap overlay: the base name must be at most {BitmapFormat.MaximumBaseNameLength} UTF-8 bytes without NUL characters.");
        }
        long grains = BitmapFormat.GrainCount(virtualSize, grainSize);
        if (BitmapFormat.MapLength(grains) > BitmapFormat.MaximumMapLength)
        {
            throw new StorageException($"Cannot create a bitmap overlay of {virtualSize} bytes with {grainSize}-byte grains: the map would exceed {BitmapFormat.MaximumMapLength} bytes; choose larger grains.");
        }
        bool transient = options.Policy == MetadataPolicy.Transient;
        BitmapHeader header = BitmapHeader.ForNewOverlay(virtualSize, grainSize, baseInfo.SizeBytes, create.BaseName, transient);
        if (cowInfo.SizeBytes < header.RequiredDeviceSize)
        {
            throw new StorageException(
                $"The CoW device {cowInfo.Description} is too small: {cowInfo.SizeBytes} bytes, an overlay of a {virtualSize}-byte disk " +
                $"needs {header.RequiredDeviceSize} ({header.DataOffset} bytes of header and map, then the data area).");
        }
        CheckSectorSizes(cowInfo, baseInfo, header);

        GrainMap map = new(grains, header.BitmapLength);
        using (AlignedBlock block = new(BitmapFormat.HeaderRegionSize))
        {
            if (!transient)
            {
                ZeroMapOnDevice(cowDevice, header);
                Check(cowDevice.Flush(), cowDevice, "flush the new map");
            }
            header.WriteTo(block.Span);
            int sector = Math.Max(BitmapFormat.HeaderSize, cowInfo.LogicalSectorSize);
            IoBuffer buffer = block.AsIoBuffer(0, sector);
            Check(cowDevice.Write(0, new ReadOnlySpan<IoBuffer>(in buffer)), cowDevice, "write the header");
            if (!transient)
            {
                Check(cowDevice.Flush(), cowDevice, "flush the header");
            }
        }
        return Start(cowDevice, baseDevice, header, map, options, readOnly: false, uncleanShutdown: false);
    }

    /// <summary>
    /// Opens an existing overlay over <paramref name="baseDevice"/> (which may be null only for a
    /// standalone overlay; a standalone overlay ignores a base of the wrong size). Validates every
    /// header field before using it and the whole map; refuses, with a <see cref="StorageException"/>
    /// naming the problem, a damaged or foreign header, a device too small, a base of the wrong size,
    /// unknown incompatible features, or an impossible map (run <see cref="BitmapChecker"/>).
    /// A writable, persistent open sets the header's dirty flag until <see cref="Dispose"/>.
    /// </summary>
    public static BitmapOverlay Open(IBlockDevice cowDevice, IBlockDevice? baseDevice, BitmapOverlayOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(cowDevice);
        options ??= new BitmapOverlayOptions();
        if (options.Policy == MetadataPolicy.Transient)
        {
            throw new StorageException("A bitmap overlay cannot be reopened with the transient policy: transient overlays are created, used and thrown away.");
        }
        BlockDeviceInfo cowInfo = cowDevice.Info;
        BitmapHeader header = ReadHeader(cowDevice);
        string? refusal = header.DescribeIncompatibleFeatures();
        if (refusal is not null)
        {
            throw new StorageException($"Refusing the bitmap overlay on {cowInfo.Description}: {refusal}.");
        }
        if (header.IsStandalone)
        {
            if (baseDevice is not null && baseDevice.Info.SizeBytes != header.BaseSize)
            {
                baseDevice = null;
            }
        }
        else if (baseDevice is null)
        {
            throw new StorageException($"The bitmap overlay on {cowInfo.Description} needs its base ({header.BaseSize} bytes{DescribeName(header)}), and none was given.");
        }
        else if (baseDevice.Info.SizeBytes != header.BaseSize)
        {
            throw new StorageException(
                $"The base {baseDevice.Info.Description} is {baseDevice.Info.SizeBytes} bytes, but the bitmap overlay on {cowInfo.Description} " +
                $"was made over a {header.BaseSize}-byte base{DescribeName(header)}; refusing a base that is not the original.");
        }
        CheckSectorSizes(cowInfo, baseDevice?.Info, header);

        GrainMap map = new(header.GrainCount, header.BitmapLength);
        LoadMap(cowDevice, header, map.Bytes);
        GrainCounts counts = GrainCounts.Scan(map.Bytes, map.GrainCount);
        if (counts.Invalid != 0 || counts.NonZeroBytesBeyondEnd != 0)
        {
            throw new StorageException(
                $"The bitmap overlay on {cowInfo.Description} has an impossible map ({counts.Invalid} grains in the invalid state, " +
                $"{counts.NonZeroBytesBeyondEnd} bytes with bits past the last grain); run the bitmap checker with repair.");
        }
        if (header.IsStandalone && counts.Base != 0)
        {
            throw new StorageException(
                $"The bitmap overlay on {cowInfo.Description} is marked standalone but {counts.Base} grains still refer to the base; run the bitmap checker with repair.");
        }
        bool readOnly = options.ReadOnly || cowInfo.ReadOnly;
        return Start(cowDevice, baseDevice, header, map, options, readOnly, header.IsDirty);
    }

    /// <summary>
    /// Opens an overlay whose base is named in its header, if <see cref="BitmapOverlayOptions.BackingPolicy"/>
    /// allows that file: the name must be an absolute path, and nothing else is ever opened. The base
    /// is opened read-only with <paramref name="openBase"/> (default: a raw file or block device).
    /// </summary>
    public static BitmapOverlay OpenWithStoredBase(IBlockDevice cowDevice, BitmapOverlayOptions? options = null, Func<string, IBlockDevice>? openBase = null)
    {
        ArgumentNullException.ThrowIfNull(cowDevice);
        options ??= new BitmapOverlayOptions();
        BitmapHeader header = ReadHeader(cowDevice);
        if (header.IsStandalone)
        {
            return Open(cowDevice, null, options);
        }
        string name = header.BaseName;
        if (name.Length == 0 || !Path.IsPathFullyQualified(name))
        {
            throw new StorageException($"The bitmap overlay on {cowDevice.Info.Description} names no absolute base path (\"{name}\"); give the base explicitly.");
        }
        string fullPath = Path.GetFullPath(name);
        if (!options.BackingPolicy.Allows(fullPath, name))
        {
            throw new StorageException($"The bitmap overlay on {cowDevice.Info.Description} names {fullPath} as its base, which the backing file policy does not allow.");
        }
        IBlockDevice baseDevice = (openBase ?? (path => ImageLocks.OpenRaw(path, readOnly: true)))(fullPath);
        try
        {
            return Open(cowDevice, baseDevice, options);
        }
        catch
        {
            baseDevice.Dispose();
            throw;
        }
    }

    /// <summary>Reads and validates the header of the overlay on <paramref name="cowDevice"/> (feature flags not judged).</summary>
    public static BitmapHeader ReadHeader(IBlockDevice cowDevice)
    {
        string? problem = TryReadHeader(cowDevice, out BitmapHeader? header);
        if (problem is not null)
        {
            throw new StorageException($"Not a usable bitmap overlay on {cowDevice.Info.Description}: {problem}.");
        }
        return header!;
    }

    internal static string? TryReadHeader(IBlockDevice cowDevice, out BitmapHeader? header)
    {
        header = null;
        long size = cowDevice.Info.SizeBytes;
        if (size < BitmapFormat.HeaderRegionSize)
        {
            return $"the device is {size} bytes, too small to hold a bitmap overlay header";
        }
        using AlignedBlock block = new(BitmapFormat.HeaderRegionSize);
        IoBuffer buffer = block.AsIoBuffer(0, BitmapFormat.HeaderRegionSize);
        IoStatus status = cowDevice.Read(0, new ReadOnlySpan<IoBuffer>(in buffer));
        if (status != IoStatus.Ok)
        {
            return $"reading the header failed ({status.Describe()})";
        }
        return BitmapHeader.TryParse(block.Span, size, out header);
    }

    internal static void LoadMap(IBlockDevice cowDevice, BitmapHeader header, Span<byte> map)
    {
        using AlignedBlock chunk = new(checked((int)Math.Min(MapReadChunk, header.BitmapLength)));
        for (long done = 0; done < header.BitmapLength; done += MapReadChunk)
        {
            int length = (int)Math.Min(MapReadChunk, header.BitmapLength - done);
            IoBuffer buffer = chunk.AsIoBuffer(0, length);
            Check(cowDevice.Read(header.BitmapOffset + done, new ReadOnlySpan<IoBuffer>(in buffer)), cowDevice, "read the map");
            chunk.Slice(0, length).CopyTo(map.Slice((int)done, length));
        }
    }

    private static void ZeroMapOnDevice(IBlockDevice cowDevice, BitmapHeader header)
    {
        using AlignedBlock zeros = new(checked((int)Math.Min(MapReadChunk, header.BitmapLength)));
        for (long done = 0; done < header.BitmapLength; done += MapReadChunk)
        {
            int length = (int)Math.Min(MapReadChunk, header.BitmapLength - done);
            IoBuffer buffer = zeros.AsIoBuffer(0, length);
            Check(cowDevice.Write(header.BitmapOffset + done, new ReadOnlySpan<IoBuffer>(in buffer)), cowDevice, "zero the map");
        }
    }

    private static void CheckSectorSizes(BlockDeviceInfo cowInfo, BlockDeviceInfo? baseInfo, BitmapHeader header)
    {
        if (cowInfo.LogicalSectorSize > BitmapFormat.MapBlockSize)
        {
            throw new StorageException($"The CoW device {cowInfo.Description} has {cowInfo.LogicalSectorSize}-byte sectors; bitmap overlays need sectors of at most {BitmapFormat.MapBlockSize} bytes.");
        }
        int logical = Math.Max(cowInfo.LogicalSectorSize, baseInfo?.LogicalSectorSize ?? 512);
        if (header.GrainSize < logical)
        {
            throw new StorageException($"The grain size {header.GrainSize} is smaller than the {logical}-byte sectors of the CoW device or base.");
        }
        if (header.VirtualSize % logical != 0 || header.BaseSize % logical != 0)
        {
            throw new StorageException($"The virtual size {header.VirtualSize} or base size {header.BaseSize} is not a whole number of {logical}-byte sectors.");
        }
    }

    private static BitmapOverlay Start(IBlockDevice cow, IBlockDevice? baseDevice, BitmapHeader header, GrainMap map, BitmapOverlayOptions options, bool readOnly, bool uncleanShutdown)
    {
        BitmapOverlay overlay = new(cow, baseDevice, header, map, options, readOnly, uncleanShutdown);
        if (!readOnly && options.Policy != MetadataPolicy.Transient)
        {
            // The dirty flag records that the overlay is open for writing, so that an unclean shutdown is reported at the next open.
            IoStatus status = overlay.WriteHeader(header.CompatibleFeatures | BitmapFormat.CompatibleDirty);
            if (status == IoStatus.Ok)
            {
                status = cow.Flush();
            }
            if (status != IoStatus.Ok)
            {
                overlay._disposed = 1;
                overlay.ReleaseMemory();
                throw new StorageException($"Cannot open the bitmap overlay on {cow.Info.Description} for writing: setting the dirty flag failed ({status.Describe()}).");
            }
        }
        return overlay;
    }

    private void ReleaseMemory()
    {
        _copyUpBuffers.Dispose();
        _zeros.Dispose();
        _headerBlock.Dispose();
    }

    private static string DescribeName(BitmapHeader header) => header.BaseName.Length == 0 ? "" : $", named \"{header.BaseName}\"";

    private static void Check(IoStatus status, IBlockDevice device, string what)
    {
        if (status != IoStatus.Ok)
        {
            throw new StorageException($"Bitmap overlay on {device.Info.Description}: could not {what} ({status.Describe()}).");
        }
    }
}
