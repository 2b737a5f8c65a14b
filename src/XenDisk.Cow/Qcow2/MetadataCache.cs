using XenDisk.Cow.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>
/// A least-recently-used cache of one-cluster metadata blocks (L2 tables or refcount blocks), keyed
/// by host offset, with a byte budget. Not thread-safe: the image's metadata lock guards it.
/// <para>
/// Only clean blocks are evicted. A dirty block must reach the disk in the order the crash-safety
/// rules demand (data, then refcounts, then L2), which only a write-back pass can provide; when the
/// budget is exceeded by dirty blocks the cache grows past it and <see cref="NeedsWriteBack"/> asks
/// the image to run that pass. Blocks being written back are pinned so that a re-read can never
/// return the stale on-disk copy.
/// </para>
/// <para>
/// With <c>trackUnwritten</c>, the cache also keeps the blocks changed since they last went to the
/// file (by a pass or by <see cref="TakeUnwritten"/>), so that an image can put a request's
/// metadata into the file before the request is answered without scanning the whole cache.
/// </para>
/// </summary>
internal sealed class MetadataCache : IDisposable
{
    private readonly Dictionary<long, Entry> _entries = [];
    private readonly Stack<AlignedBlock> _spare = new();
    private readonly Entry _lru = new(-1, null!); // sentinel: _lru.Next is the most recently used
    private readonly int _blockSize;
    private readonly int _capacity;
    private readonly bool _trackUnwritten;
    private readonly List<Entry> _unwritten = [];

    public MetadataCache(int blockSize, long budgetBytes, bool trackUnwritten = false)
    {
        _blockSize = blockSize;
        _trackUnwritten = trackUnwritten;
        _capacity = (int)Math.Clamp(budgetBytes / blockSize, 2, int.MaxValue);
        _lru.Next = _lru.Previous = _lru;
    }

    public sealed class Entry(long offset, AlignedBlock block)
    {
        public long Offset { get; } = offset;
        public AlignedBlock Block { get; } = block;
        public bool Dirty { get; set; }
        public int Pins { get; set; }

        /// <summary>Changed in memory since the block was last written to the file (tracked caches only).</summary>
        public bool Unwritten { get; set; }

        /// <summary>While <see cref="Unwritten"/>: the first byte of the block changed since it last reached the file.</summary>
        public int UnwrittenStart { get; set; }

        /// <summary>While <see cref="Unwritten"/>: the end (exclusive) of the bytes changed since the block last reached the file.</summary>
        public int UnwrittenEnd { get; set; }

        /// <summary>A block that never was in the file: whatever its cluster held before is not a table of this kind.</summary>
        public bool New { get; set; }

        internal Entry? Previous;
        internal Entry? Next;
    }

    /// <summary>The number of blocks the budget allows.</summary>
    public int Capacity => _capacity;

    public int Count => _entries.Count;

    public long BytesInUse => (long)_entries.Count * _blockSize;

    public bool NeedsWriteBack { get; private set; }

    public bool TryGet(long offset, out Entry entry)
    {
        if (_entries.TryGetValue(offset, out entry!))
        {
            Unlink(entry);
            LinkFirst(entry);
            return true;
        }
        return false;
    }

    /// <summary>The block at <paramref name="offset"/> if cached, without counting it as used (a scan must not reorder the cache).</summary>
    public bool TryPeek(long offset, out Entry entry) => _entries.TryGetValue(offset, out entry!);

    /// <summary>A zeroed block to fill, reused from evicted entries when possible.</summary>
    public AlignedBlock RentBlock()
    {
        if (_spare.TryPop(out AlignedBlock? block))
        {
            block.Span.Clear();
            return block;
        }
        return new AlignedBlock(_blockSize);
    }

    public void ReturnBlock(AlignedBlock block)
    {
        if (_spare.Count < 4)
        {
            _spare.Push(block);
        }
        else
        {
            block.Dispose();
        }
    }

    /// <summary>Adds a block (owned by the cache from now on), evicting clean blocks beyond the budget.</summary>
    public Entry Add(long offset, AlignedBlock block, bool dirty)
    {
        // Make room first, so that the block being added is never the one evicted.
        TrimTo(_capacity - 1);
        Entry entry = new(offset, block) { Dirty = dirty };
        _entries.Add(offset, entry);
        LinkFirst(entry);
        if (dirty)
        {
            entry.New = true;
            MarkChanged(entry);
        }
        NeedsWriteBack = _entries.Count > _capacity;
        return entry;
    }

    /// <summary>Marks a whole block changed: dirty for the next pass and, when tracked, unwritten until it next reaches the file.</summary>
    public void MarkChanged(Entry entry) => MarkChanged(entry, 0, entry.Block.Length);

    /// <summary>
    /// Marks <paramref name="length"/> bytes at <paramref name="start"/> of a block changed. A tracked
    /// cache keeps the span of bytes changed since the block last reached the file, so that a
    /// publication writes only the sectors that hold them, not the whole block.
    /// </summary>
    public void MarkChanged(Entry entry, int start, int length)
    {
        entry.Dirty = true;
        if (!_trackUnwritten)
        {
            return;
        }
        if (!entry.Unwritten)
        {
            entry.Unwritten = true;
            entry.UnwrittenStart = start;
            entry.UnwrittenEnd = start + length;
            _unwritten.Add(entry);
            return;
        }
        entry.UnwrittenStart = Math.Min(entry.UnwrittenStart, start);
        entry.UnwrittenEnd = Math.Max(entry.UnwrittenEnd, start + length);
    }

    /// <summary>
    /// Moves the blocks changed since they last reached the file into <paramref name="into"/> and
    /// marks them written (the caller writes them before it releases its claim on the file). They
    /// stay dirty: the next pass still writes them in its order, and only it makes them durable.
    /// </summary>
    public void TakeUnwritten(List<Entry> into)
    {
        foreach (Entry entry in _unwritten)
        {
            if (entry.Unwritten)
            {
                entry.Unwritten = false;
                into.Add(entry);
            }
        }
        _unwritten.Clear();
    }

    /// <summary>Drops a block (its cluster was freed). Pinned blocks stay until unpinned.</summary>
    public void Remove(long offset)
    {
        if (_entries.TryGetValue(offset, out Entry? entry) && entry.Pins == 0)
        {
            // A freed block is never written again, nor is its buffer once returned.
            entry.Unwritten = false;
            _entries.Remove(offset);
            Unlink(entry);
            ReturnBlock(entry.Block);
        }
    }

    public IEnumerable<Entry> DirtyEntries()
    {
        for (Entry e = _lru.Next!; e != _lru; e = e.Next!)
        {
            if (e.Dirty)
            {
                yield return e;
            }
        }
    }

    /// <summary>
    /// Copies every dirty block for a write-back pass, sorted by offset: each is marked clean and
    /// pinned (the pass unpins it, and marks it dirty again if its write failed).
    /// </summary>
    public void CaptureDirty(List<(long Offset, AlignedBlock Copy, Entry Entry)> into, Func<AlignedBlock> rentCopy)
    {
        int first = into.Count;
        foreach (Entry entry in DirtyEntries())
        {
            AlignedBlock copy = rentCopy();
            entry.Block.Span.CopyTo(copy.Span);
            entry.Dirty = false;
            // The pass writes this copy, and no one can write the file while the pass runs.
            entry.Unwritten = false;
            entry.New = false;
            entry.Pins++;
            into.Add((entry.Offset, copy, entry));
        }
        into.Sort(first, into.Count - first, Comparer<(long Offset, AlignedBlock Copy, Entry Entry)>.Create((a, b) => a.Offset.CompareTo(b.Offset)));
    }

    public int DirtyCount
    {
        get
        {
            int count = 0;
            foreach (Entry e in _entries.Values)
            {
                count += e.Dirty ? 1 : 0;
            }
            return count;
        }
    }

    /// <summary>Evicts clean, unpinned blocks from the least recently used end until within budget.</summary>
    public void Trim() => TrimTo(_capacity);

    private void TrimTo(int capacity)
    {
        Entry e = _lru.Previous!;
        while (_entries.Count > capacity && e != _lru)
        {
            Entry previous = e.Previous!;
            if (!e.Dirty && e.Pins == 0)
            {
                _entries.Remove(e.Offset);
                Unlink(e);
                ReturnBlock(e.Block);
            }
            e = previous;
        }
        NeedsWriteBack = _entries.Count > _capacity;
    }

    /// <summary>Drops everything (after the structure was rebuilt elsewhere).</summary>
    public void Clear()
    {
        foreach (Entry e in _entries.Values)
        {
            e.Block.Dispose();
        }
        _entries.Clear();
        _unwritten.Clear();
        _lru.Next = _lru.Previous = _lru;
        NeedsWriteBack = false;
    }

    public void Dispose()
    {
        Clear();
        while (_spare.TryPop(out AlignedBlock? block))
        {
            block.Dispose();
        }
    }

    private void LinkFirst(Entry e)
    {
        e.Previous = _lru;
        e.Next = _lru.Next;
        _lru.Next!.Previous = e;
        _lru.Next = e;
    }

    private static void Unlink(Entry e)
    {
        e.Previous!.Next = e.Next;
        e.Next!.Previous = e.Previous;
        e.Previous = e.Next = null;
    }
}
