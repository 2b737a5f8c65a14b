namespace XenDisk.Cow.Qcow2;

/// <summary>What a host cluster holds, as far as the overlap check cares (the QCOW2_OL_* classes of QEMU's qcow2_check_metadata_overlap).</summary>
[Flags]
internal enum MetadataKind : ushort
{
    /// <summary>Guest data, or free.</summary>
    None = 0,
    Header = 1 << 0,
    L1Table = 1 << 1,
    RefcountTable = 1 << 2,
    RefcountBlock = 1 << 3,
    L2Table = 1 << 4,
    SnapshotTable = 1 << 5,
    SnapshotL1Table = 1 << 6,
    BitmapDirectory = 1 << 7,
    BitmapTable = 1 << 8,
    /// <summary>A cluster of a persistent dirty bitmap: not metadata QEMU checks writes against, but in use, so never allocated.</summary>
    BitmapData = 1 << 9,
}

/// <summary>
/// The host clusters that hold metadata, kept current as metadata is allocated and freed, so that
/// every write and every allocation can be checked against them. Images are untrusted and their
/// refcounts may be wrong: a cluster the refcounts call free, or an entry pointing at another
/// structure, must never lead to one structure being written over another or guest data landing on
/// metadata. A cluster that two structures claim carries both kinds, and then no write of either
/// kind is allowed onto it. Not thread-safe: the image's metadata lock guards it.
/// </summary>
internal sealed class MetadataClusters
{
    private readonly Dictionary<long, MetadataKind> _kinds = [];

    public int Count => _kinds.Count;

    /// <summary>Records <paramref name="count"/> clusters from <paramref name="firstCluster"/> as holding <paramref name="kind"/>.</summary>
    public void Add(long firstCluster, long count, MetadataKind kind)
    {
        for (long c = firstCluster; c < firstCluster + count; c++)
        {
            _kinds[c] = KindOf(c) | kind;
        }
    }

    /// <summary>The clusters no longer hold <paramref name="kind"/> (a table moved, a structure was freed).</summary>
    public void Remove(long firstCluster, long count, MetadataKind kind)
    {
        for (long c = firstCluster; c < firstCluster + count; c++)
        {
            MetadataKind left = KindOf(c) & ~kind;
            if (left == MetadataKind.None)
            {
                _kinds.Remove(c);
            }
            else
            {
                _kinds[c] = left;
            }
        }
    }

    /// <summary>Takes over every entry of <paramref name="other"/>, forgetting its own (the map built at open).</summary>
    public void ReplaceWith(MetadataClusters other)
    {
        _kinds.Clear();
        foreach ((long cluster, MetadataKind kind) in other._kinds)
        {
            _kinds[cluster] = kind;
        }
    }

    /// <summary>Forgets every cluster of the given kinds (before they are registered again from new tables).</summary>
    public void RemoveAll(MetadataKind kinds)
    {
        foreach (long cluster in _kinds.Keys.ToList())
        {
            Remove(cluster, 1, kinds);
        }
    }

    public MetadataKind KindOf(long cluster) => _kinds.TryGetValue(cluster, out MetadataKind kind) ? kind : MetadataKind.None;

    /// <summary>
    /// Checks that every cluster of the byte range [<paramref name="offset"/>, +<paramref name="length"/>)
    /// holds exactly <paramref name="expected"/> (<see cref="MetadataKind.None"/> for guest data).
    /// Returns the first cluster where that fails and what it holds, or -1.
    /// </summary>
    public long FindConflict(long offset, long length, int clusterBits, MetadataKind expected, out MetadataKind found)
    {
        found = MetadataKind.None;
        if (length <= 0)
        {
            return -1;
        }
        long first = offset >> clusterBits;
        long last = (offset + length - 1) >> clusterBits;
        for (long c = first; c <= last; c++)
        {
            MetadataKind kind = KindOf(c);
            if (kind != expected)
            {
                found = kind;
                return c;
            }
        }
        return -1;
    }

    /// <summary>Operator-readable names, for the log line that explains an overlap.</summary>
    public static string Describe(MetadataKind kind)
    {
        if (kind == MetadataKind.None)
        {
            return "guest data";
        }
        List<string> names = [];
        foreach (MetadataKind flag in Enum.GetValues<MetadataKind>())
        {
            if (flag != MetadataKind.None && (kind & flag) != 0)
            {
                names.Add(flag switch
                {
                    MetadataKind.Header => "the header",
                    MetadataKind.L1Table => "the L1 table",
                    MetadataKind.RefcountTable => "the refcount table",
                    MetadataKind.RefcountBlock => "a refcount block",
                    MetadataKind.L2Table => "an L2 table",
                    MetadataKind.SnapshotTable => "the snapshot table",
                    MetadataKind.SnapshotL1Table => "a snapshot's L1 table",
                    MetadataKind.BitmapDirectory => "the bitmap directory",
                    MetadataKind.BitmapTable => "a bitmap table",
                    _ => "a bitmap's data",
                });
            }
        }
        return string.Join(" and ", names);
    }
}
