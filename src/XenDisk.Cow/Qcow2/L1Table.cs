using System.Buffers.Binary;
using XenDisk.Cow.Storage;
using XenDisk.Storage;

namespace XenDisk.Cow.Qcow2;

/// <summary>
/// The active L1 table of an open qcow2 image (qcow2 spec, == Cluster mapping ==): its entries in
/// memory, where the table lives in the file, and which of its sectors changed since the last
/// write-back. One instance per table: a table that grows is replaced by a new instance
/// (<see cref="CopyTo"/>), so the entries, offset and size always describe the same table.
/// The caller serialises access (the image's metadata lock) and writes the dirty runs back.
/// Ownership: the table owns its buffer; <see cref="Dispose"/> releases it.
/// </summary>
internal sealed class L1Table : IDisposable
{
    private readonly AlignedBlock _entries;
    private readonly DirtySectors _dirty;

    /// <summary>Sectors changed since they last reached the file (a subset of <see cref="_dirty"/>).</summary>
    private readonly DirtySectors _unwritten;

    /// <param name="size">Entries in the table (l1_size).</param>
    /// <param name="offset">Where the table starts in the image file (l1_table_offset).</param>
    /// <param name="bufferBytes">Bytes of the in-memory copy: at least size * 8, rounded up to whole metadata sectors.</param>
    /// <param name="metadataSector">The unit in which metadata is written back.</param>
    public L1Table(int size, long offset, int bufferBytes, int metadataSector)
    {
        Size = size;
        Offset = offset;
        _entries = new AlignedBlock(bufferBytes);
        _dirty = new DirtySectors(_entries.Length, metadataSector);
        _unwritten = new DirtySectors(_entries.Length, metadataSector);
    }

    /// <summary>Entries in the table (l1_size).</summary>
    public int Size { get; }

    /// <summary>Where the table starts in the image file (l1_table_offset).</summary>
    public long Offset { get; }

    /// <summary>Bytes of memory the table takes.</summary>
    public long MemoryBytes => _entries.Length;

    /// <summary>The in-memory copy, whose first Size * 8 bytes are the entries (big-endian).</summary>
    public AlignedBlock Block => _entries;

    public ulong Read(long index) => BinaryPrimitives.ReadUInt64BigEndian(_entries.Span[(int)(index * 8)..]);

    /// <summary>Changes an entry in memory and marks its sector for the next write-back.</summary>
    public void Write(long index, ulong value)
    {
        BinaryPrimitives.WriteUInt64BigEndian(_entries.Span[(int)(index * 8)..], value);
        _dirty.Mark(index * 8);
        _unwritten.Mark(index * 8);
    }

    /// <summary>
    /// Zeroes the bytes after the last entry, which belong to no entry, so that writing a sector back
    /// is harmless; called after the table was read from the file.
    /// </summary>
    public void ClearTail() => _entries.Span[(Size * 8)..].Clear();

    /// <summary>The runs changed since the last call, as (byte offset in the table, length).</summary>
    public List<(int Start, int Length)> TakeDirtyRuns()
    {
        // The pass writes every dirty run, so nothing is left unwritten.
        _unwritten.Clear();
        return _dirty.TakeRuns();
    }

    /// <summary>
    /// The runs changed since they last reached the file, appended to <paramref name="into"/> and
    /// marked written; they stay dirty for the next pass, which alone makes them durable.
    /// </summary>
    public void TakeUnwrittenRuns(List<(int Start, int Length)> into) => _unwritten.TakeRuns(into);

    /// <summary>Copies the entries into the start of a larger table's buffer (growing the table).</summary>
    public void CopyTo(AlignedBlock destination) => _entries.Span[..(Size * 8)].CopyTo(destination.Span);

    public void Dispose() => _entries.Dispose();
}
