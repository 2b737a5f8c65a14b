namespace XenDisk.Cow.Bitmap;

/// <summary>
/// The grain state map held in memory (two bits per grain, the on-disk encoding), with the set of
/// map blocks changed since they were last written back.
/// <para>
/// Concurrency: states are read without a lock (a byte read sees the old or the new value of a
/// grain, never a mix, because a grain's two bits share one byte). Changes and the dirty set are
/// guarded by <see cref="Gate"/>, held only for in-memory work.
/// </para>
/// </summary>
internal sealed class GrainMap
{
    private const byte Clean = 0;
    private const byte LazyDirty = 1;
    private const byte RequiredDirty = 2;

    private readonly byte[] _bytes;
    private readonly byte[] _blockDirt;
    private readonly List<int> _dirtyBlocks = [];
    private readonly bool[] _unwritten;
    private readonly List<int> _unwrittenBlocks = [];

    public GrainMap(long grainCount, long mapLength)
    {
        GrainCount = grainCount;
        _bytes = new byte[mapLength];
        _blockDirt = new byte[mapLength / BitmapFormat.MapBlockSize];
        _unwritten = new bool[_blockDirt.Length];
    }

    /// <summary>
    /// Keep the blocks changed since they last reached the file (<see cref="TakeUnwrittenLocked"/>),
    /// for an overlay that writes them before it answers. Set before any I/O.
    /// </summary>
    public bool TrackUnwritten { get; set; }

    /// <summary>
    /// A grain marked mapped since the last data flush holds bytes the guest did not write with
    /// that request (a copy-up, hydration): its data must be durable before its map block reaches
    /// the file. Guarded by <see cref="Gate"/>.
    /// </summary>
    public bool DataFirstPending { get; set; }

    public Lock Gate { get; } = new();

    public long GrainCount { get; }

    public int BlockCount => _blockDirt.Length;

    /// <summary>Bytes of memory the map itself uses.</summary>
    public long MemoryBytes => _bytes.LongLength + _blockDirt.LongLength;

    /// <summary>The raw map, for loading at open and for the checker. Not for use while I/O runs.</summary>
    public Span<byte> Bytes => _bytes;

    public GrainState Get(long grain)
    {
        byte packed = Volatile.Read(ref _bytes[grain >> 2]);
        return (GrainState)((packed >> (((int)grain & 3) * 2)) & 3);
    }

    /// <summary>
    /// Sets grains [<paramref name="first"/>, first + <paramref name="count"/>) to <paramref name="state"/> and marks
    /// their blocks dirty. <paramref name="required"/>: the change must reach the disk on the next
    /// flush (false only for changes the Lazy policy may persist late). <paramref name="copied"/>: the
    /// grains hold data the guest did not send with this request (see <see cref="DataFirstPending"/>).
    /// Returns how many grains changed.
    /// </summary>
    public long Set(long first, long count, GrainState state, bool required, bool copied = false)
    {
        long changed = 0;
        lock (Gate)
        {
            for (long grain = first; grain < first + count; grain++)
            {
                long index = grain >> 2;
                int shift = ((int)grain & 3) * 2;
                byte old = _bytes[index];
                byte updated = (byte)((old & ~(3 << shift)) | ((int)state << shift));
                if (old == updated)
                {
                    continue;
                }
                Volatile.Write(ref _bytes[index], updated);
                MarkDirtyLocked((int)(index / BitmapFormat.MapBlockSize), required);
                changed++;
            }
            DataFirstPending |= copied && changed > 0;
        }
        return changed;
    }

    /// <summary>
    /// Takes the dirty blocks (all, or only those a flush must write) in ascending order into
    /// <paramref name="taken"/> and marks them clean. Call under <see cref="Gate"/> and copy their
    /// contents before releasing it, so that a later change marks the block dirty again.
    /// </summary>
    public void TakeDirtyLocked(bool requiredOnly, List<int> taken)
    {
        taken.Clear();
        int kept = 0;
        for (int i = 0; i < _dirtyBlocks.Count; i++)
        {
            int block = _dirtyBlocks[i];
            if (requiredOnly && _blockDirt[block] != RequiredDirty)
            {
                _dirtyBlocks[kept++] = block;
                continue;
            }
            _blockDirt[block] = Clean;
            _unwritten[block] = false; // the pass writes it
            taken.Add(block);
        }
        _dirtyBlocks.RemoveRange(kept, _dirtyBlocks.Count - kept);
        taken.Sort();
    }

    /// <summary>
    /// Takes the blocks changed since they last reached the file, ascending, into <paramref name="taken"/>
    /// and marks them written; they stay dirty, since only a pass makes them durable. Call under
    /// <see cref="Gate"/> and copy their contents before releasing it.
    /// </summary>
    public void TakeUnwrittenLocked(List<int> taken)
    {
        taken.Clear();
        foreach (int block in _unwrittenBlocks)
        {
            if (_unwritten[block])
            {
                _unwritten[block] = false;
                taken.Add(block);
            }
        }
        _unwrittenBlocks.Clear();
        taken.Sort();
    }

    public ReadOnlySpan<byte> BlockLocked(int block) => _bytes.AsSpan(block * BitmapFormat.MapBlockSize, BitmapFormat.MapBlockSize);

    /// <summary>Puts blocks back into the dirty set after their write-back failed.</summary>
    public void RestoreDirty(List<int> blocks)
    {
        lock (Gate)
        {
            foreach (int block in blocks)
            {
                MarkDirtyLocked(block, required: true);
            }
        }
    }

    private void MarkDirtyLocked(int block, bool required)
    {
        if (TrackUnwritten && !_unwritten[block])
        {
            _unwritten[block] = true;
            _unwrittenBlocks.Add(block);
        }
        byte dirt = required ? RequiredDirty : LazyDirty;
        byte current = _blockDirt[block];
        if (current == Clean)
        {
            _dirtyBlocks.Add(block);
        }
        if (dirt > current)
        {
            _blockDirt[block] = dirt;
        }
    }
}

/// <summary>What a scan of a map found.</summary>
public readonly record struct GrainCounts(long Base, long Mapped, long Discarded, long Invalid, long NonZeroBytesBeyondEnd)
{
    /// <summary>Counts the states of the first <paramref name="grainCount"/> grains and the non-zero bits after them.</summary>
    public static GrainCounts Scan(ReadOnlySpan<byte> map, long grainCount)
    {
        long mapped = 0, discarded = 0, invalid = 0, beyond = 0;
        long wholeBytes = grainCount / BitmapFormat.GrainsPerByte;
        for (long i = 0; i < wholeBytes; i++)
        {
            byte packed = map[(int)i];
            if (packed == 0)
            {
                continue;
            }
            for (int shift = 0; shift < 8; shift += 2)
            {
                switch ((packed >> shift) & 3)
                {
                    case 1: mapped++; break;
                    case 2: discarded++; break;
                    case 3: invalid++; break;
                }
            }
        }
        int tailGrains = (int)(grainCount % BitmapFormat.GrainsPerByte);
        long next = wholeBytes;
        if (tailGrains != 0)
        {
            byte packed = map[(int)wholeBytes];
            for (int g = 0; g < tailGrains; g++)
            {
                switch ((packed >> (g * 2)) & 3)
                {
                    case 1: mapped++; break;
                    case 2: discarded++; break;
                    case 3: invalid++; break;
                }
            }
            if ((packed >> (tailGrains * 2)) != 0)
            {
                beyond++;
            }
            next++;
        }
        for (long i = next; i < map.Length; i++)
        {
            if (map[(int)i] != 0)
            {
                beyond++;
            }
        }
        return new GrainCounts(grainCount - mapped - discarded - invalid, mapped, discarded, invalid, beyond);
    }
}
