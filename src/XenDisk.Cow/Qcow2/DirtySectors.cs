namespace XenDisk.Cow.Qcow2;

/// <summary>Which sectors of an in-memory table (the L1 table, the refcount table) differ from the disk.</summary>
internal sealed class DirtySectors(long tableBytes, int sectorSize)
{
    private readonly bool[] _dirty = new bool[(tableBytes + sectorSize - 1) / sectorSize];

    public int SectorSize { get; } = sectorSize;

    public bool Any { get; private set; }

    public void Mark(long byteOffset)
    {
        _dirty[byteOffset / SectorSize] = true;
        Any = true;
    }

    public void MarkAll()
    {
        Array.Fill(_dirty, true);
        Any = _dirty.Length > 0;
    }

    /// <summary>Returns the dirty runs as (byte offset, byte length) and marks everything clean.</summary>
    public List<(int Start, int Length)> TakeRuns()
    {
        List<(int Start, int Length)> runs = [];
        TakeRuns(runs);
        return runs;
    }

    /// <summary>Marks everything clean.</summary>
    public void Clear()
    {
        if (Any)
        {
            Array.Clear(_dirty);
            Any = false;
        }
    }

    /// <summary>Appends the dirty runs as (byte offset, byte length) to <paramref name="runs"/> and marks everything clean.</summary>
    public void TakeRuns(List<(int Start, int Length)> runs)
    {
        if (!Any)
        {
            return;
        }
        int i = 0;
        while (i < _dirty.Length)
        {
            if (!_dirty[i])
            {
                i++;
                continue;
            }
            int first = i;
            while (i < _dirty.Length && _dirty[i])
            {
                _dirty[i++] = false;
            }
            runs.Add((first * SectorSize, (i - first) * SectorSize));
        }
        Any = false;
    }
}
