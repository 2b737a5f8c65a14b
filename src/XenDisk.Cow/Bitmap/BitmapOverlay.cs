using XenDisk.Cow.Leases;
using XenDisk.Cow.Storage;
using XenDisk.Cow.Policies;
using XenDisk.Storage;

namespace XenDisk.Cow.Bitmap;

/// <summary>
/// A flat bitmap overlay (the dm-userspace "dscow" idea) as a block device: for fully allocated CoW
/// storage (an LVM volume, a pre-sized file) at least as large as the base plus a small metadata
/// area. Virtual byte V lives at a fixed place, data_offset + V, of the CoW device; a map of two bits
/// per grain says whether a grain is still the base's, in the overlay, or discarded (zeros). No
/// allocation, no tables. The layout is documented at the top of BitmapFormat.cs and in
/// docs/BITMAP-FORMAT.md.
/// <para>
/// Reads are split per grain into runs of one source (overlay, base, zeros), one I/O per run.
/// Writes of whole grains go straight to the data area; a partial write to a grain not yet in the
/// overlay first copies the rest of that grain (from the base, or zeros for a discarded grain).
/// </para>
/// <para>
/// Metadata policies (<see cref="MetadataPolicy"/>), all keeping the order "data durable before the
/// map block that marks it": Sync writes the changed map blocks (after a data flush) before a write
/// is acknowledged. Flush (the default) writes each changed map block once per guest flush, after
/// a data flush, so everything acknowledged before a flush is durable when it completes. Lazy is
/// Flush for writes, but a discard's map change is written only when its block is written anyway
/// (a later write, close): after a crash a discarded range may read its earlier contents again,
/// never anything else. Transient never persists anything: the map lives in memory and the header
/// is marked so that the overlay is never reopened.
/// </para>
/// <para>
/// Concurrency: thread-safe. Writes, discards, hydration and commit take striped per-grain locks
/// (in ascending stripe order, so never a deadlock), so two writes into one unmapped grain copy it
/// up once. Reads take no lock: a grain is marked mapped only after its data is complete in the
/// data area, and the base never changes, so a read racing a copy-up sees old or new data per sector.
/// </para>
/// <para>
/// Ownership: with <see cref="BitmapOverlayOptions.OwnsDevices"/> (the default) disposing the
/// overlay disposes both devices. Dispose writes the map back and clears the dirty flag; callers
/// must have stopped I/O first. Buffers passed to I/O are borrowed for the call.
/// </para>
/// </summary>
public sealed partial class BitmapOverlay : IRemappableBlockDevice, IGroupCommitDevice, ICopyOnWriteImage
{
    /// <summary>Enough stripes that unrelated grains rarely share a lock.</summary>
    private const int StripeCount = 1024;

    /// <summary>
    /// The most grains one locked step covers (1 MiB at 4 KiB grains). Less than
    /// <see cref="StripeCount"/>, so a step never needs one stripe twice.
    /// </summary>
    private const int MaxGrainsPerStep = 256;

    /// <summary>Scatter-list pieces that fit on the stack: blkif's largest indirect request has 256 segments.</summary>
    private const int StackPieces = 256;

    private readonly IBlockDevice _cow;
    private readonly IBlockDevice? _base;
    private readonly BitmapOverlayOptions _options;
    private readonly MetadataPolicy _policy;
    private readonly BitmapHeader _header;
    private readonly int _grainSize;
    private readonly int _grainShift;
    private readonly long _virtualSize;
    private readonly long _baseSize;
    private readonly long _dataOffset;
    private readonly GrainMap _map;
    private readonly Lock[] _stripes;
    private readonly RangeLeases _leases = new(StripeCount);
    private readonly Lock _writeBackLock = new();
    private readonly AlignedBlock _zeros;
    private readonly AlignedBlock _headerBlock;
    private readonly AlignedBufferPool _copyUpBuffers;
    private readonly List<int> _takenBlocks = [];
    private readonly bool _readOnly;
    private readonly bool _passDiscardsDown;
    private readonly OverlayStatistics _statistics;
    private AlignedBlock? _staging;
    private ulong _compatibleFeatures;
    private int _disposed;

    private BitmapOverlay(IBlockDevice cow, IBlockDevice? baseDevice, BitmapHeader header, GrainMap map, BitmapOverlayOptions options, bool readOnly, bool uncleanShutdown)
    {
        _cow = cow;
        _base = baseDevice;
        _options = options;
        _policy = options.Policy;
        _header = header;
        _grainSize = header.GrainSize;
        _grainShift = int.Log2(header.GrainSize);
        _virtualSize = header.VirtualSize;
        _baseSize = header.BaseSize;
        _dataOffset = header.DataOffset;
        _map = map;
        _readOnly = readOnly;
        // Flush and Lazy write a changed map block into the file before the answer (BitmapOverlay.WriteBack.cs).
        _map.TrackUnwritten = !readOnly && options.Policy is MetadataPolicy.Flush or MetadataPolicy.Lazy;
        _compatibleFeatures = header.CompatibleFeatures;
        OpenedAfterUncleanShutdown = uncleanShutdown;
        _stripes = new Lock[StripeCount];
        for (int i = 0; i < _stripes.Length; i++)
        {
            _stripes[i] = new Lock();
        }
        int grainBufferSize = Math.Max(_grainSize, AlignedBufferPool.PageSize);
        _zeros = new AlignedBlock(grainBufferSize);
        _headerBlock = new AlignedBlock(BitmapFormat.HeaderRegionSize);
        _copyUpBuffers = new AlignedBufferPool(grainBufferSize, Math.Max(1, options.CopyUpBufferCount));
        BlockDeviceInfo cowInfo = cow.Info;
        _passDiscardsDown = options.PassDiscardsDown && cowInfo.SupportsDiscard && cowInfo.DiscardZeroes && !cowInfo.ReadOnly;
        _statistics = new OverlayStatistics(() => MappedBytes, () => IsStandalone);
        int logical = Math.Max(cowInfo.LogicalSectorSize, baseDevice?.Info.LogicalSectorSize ?? 512);
        Info = new BlockDeviceInfo
        {
            SizeBytes = _virtualSize,
            LogicalSectorSize = logical,
            PhysicalSectorSize = Math.Max(logical, Math.Max(cowInfo.PhysicalSectorSize, baseDevice?.Info.PhysicalSectorSize ?? 512)),
            ReadOnly = readOnly,
            SupportsDiscard = !readOnly,
            SupportsSecureDiscard = false,
            DiscardZeroes = true,
            DiscardGranularity = _grainSize,
            DiscardAlignment = 0,
            HasVolatileCache = _policy != MetadataPolicy.Sync,
            Description = $"bitmap overlay ({_grainSize}-byte grains, {_policy} metadata) on {cowInfo.Description}" +
                (baseDevice is null ? ", standalone" : $" over {baseDevice.Info.Description}"),
        };
    }

    public BlockDeviceInfo Info { get; }

    public bool CompletesInline => _cow.CompletesInline && (_base?.CompletesInline ?? true);

    /// <summary>The header as it was read or created.</summary>
    public BitmapHeader Header => _header;

    public int GrainSize => _grainSize;

    public MetadataPolicy Policy => _policy;

    /// <summary>The header's dirty flag was set when the overlay was opened: the last session did not close cleanly.</summary>
    public bool OpenedAfterUncleanShutdown { get; }

    /// <summary>Every grain is in the overlay (after <see cref="Hydrate"/>): the base is no longer read.</summary>
    public bool IsStandalone => (Volatile.Read(ref _compatibleFeatures) & BitmapFormat.CompatibleStandalone) != 0;

    /// <summary>The CoW storage's path (or its device's description).</summary>
    public string ImageName => OverlayStatistics.NameOf(_cow);

    /// <summary>Copy-ups, map block writes and flushes; the allocated bytes are the data of the grains in the overlay (no cache: the map is all in memory).</summary>
    public OverlayStatistics Statistics => _statistics;

    /// <summary>
    /// Bytes of data the overlay holds (mapped grains), for telemetry. Scanned without the map's gate
    /// so that a scrape never holds up writes: a grain changing meanwhile is counted old or new.
    /// </summary>
    private long MappedBytes => Math.Min(GrainCounts.Scan(_map.Bytes, _map.GrainCount).Mapped << _grainShift, _virtualSize);

    /// <summary>Bytes of memory the grain map takes for this disk (see <see cref="BitmapFormat.MapBytesPerGiB"/>: 64 KiB per GiB at 4 KiB grains).</summary>
    public long MapMemoryBytes => _map.MemoryBytes;

    /// <summary>The state of the grain holding virtual byte <paramref name="offset"/> (for tools and tests).</summary>
    public GrainState GetGrainState(long offset)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(offset, _virtualSize);
        return _map.Get(offset >> _grainShift);
    }

    /// <summary>Counts of grains per state right now.</summary>
    public GrainCounts CountGrains()
    {
        lock (_map.Gate)
        {
            return GrainCounts.Scan(_map.Bytes, _map.GrainCount);
        }
    }

    /// <summary>Sizes are fixed by the header; online resize of an overlay is not supported.</summary>
    public BlockDeviceInfo Refresh() => Info;

    public void Dispose() => Close();

    /// <summary>
    /// Closes the overlay cleanly and returns the outcome, which <see cref="Dispose"/> cannot: the
    /// whole map (Lazy's deferred blocks too) written back, then the header without the dirty flag,
    /// then a flush. If any step fails the flag stays set and the next open reports it. A second
    /// call returns Ok.
    /// </summary>
    public IoStatus Close()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return IoStatus.Ok;
        }
        IoStatus status = IoStatus.Ok;
        try
        {
            if (!_readOnly && _policy != MetadataPolicy.Transient)
            {
                status = WriteBack(requiredOnly: false);
                if (status == IoStatus.Ok)
                {
                    ulong clean = Volatile.Read(ref _compatibleFeatures) & ~BitmapFormat.CompatibleDirty;
                    status = WriteHeader(clean);
                    if (status == IoStatus.Ok)
                    {
                        status = _cow.Flush();
                        _statistics.CountMetadataFlush();
                    }
                }
            }
        }
        finally
        {
            _copyUpBuffers.Dispose();
            _zeros.Dispose();
            _headerBlock.Dispose();
            _staging?.Dispose();
            if (_options.OwnsDevices)
            {
                _cow.Dispose();
                _base?.Dispose();
            }
            _statistics.MarkClosed();
        }
        return status;
    }

    private bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    private long GrainStart(long grain) => grain << _grainShift;

    private long GrainEnd(long grain) => Math.Min((grain + 1) << _grainShift, _virtualSize);

    /// <summary>Writes the header with <paramref name="compatibleFeatures"/> as one logical sector of the CoW device (atomic).</summary>
    private IoStatus WriteHeader(ulong compatibleFeatures)
    {
        Volatile.Write(ref _compatibleFeatures, compatibleFeatures);
        (_header with { CompatibleFeatures = compatibleFeatures }).WriteTo(_headerBlock.Span);
        int sector = Math.Max(BitmapFormat.HeaderSize, _cow.Info.LogicalSectorSize);
        IoBuffer buffer = _headerBlock.AsIoBuffer(0, sector);
        _statistics.CountMetadataWrites(1);
        return _cow.Write(0, new ReadOnlySpan<IoBuffer>(in buffer));
    }

    /// <summary>
    /// Takes the stripe locks of grains [first, last] in ascending stripe order (at most
    /// <see cref="MaxGrainsPerStep"/> grains), then bars their stripes to the remap fast path and waits
    /// until its I/O in flight there has completed (see <see cref="Remap"/>): whoever holds the locks
    /// may change what the grains map to.
    /// </summary>
    private void LockGrains(long first, long last)
    {
        int count = (int)(last - first + 1);
        int start = (int)(first & (StripeCount - 1));
        if (start + count <= StripeCount)
        {
            for (int i = start; i < start + count; i++)
            {
                _stripes[i].Enter();
            }
        }
        else
        {
            int wrapped = start + count - StripeCount;
            for (int i = 0; i < wrapped; i++)
            {
                _stripes[i].Enter();
            }
            for (int i = start; i < StripeCount; i++)
            {
                _stripes[i].Enter();
            }
        }
        _leases.Bar(start, count);
    }

    private void UnlockGrains(long first, long last)
    {
        int count = (int)(last - first + 1);
        int start = (int)(first & (StripeCount - 1));
        _leases.Unbar(start, count);
        for (int n = 0; n < count; n++)
        {
            _stripes[(start + n) & (StripeCount - 1)].Exit();
        }
    }
}
