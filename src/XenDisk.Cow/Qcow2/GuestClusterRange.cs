namespace XenDisk.Cow.Qcow2;

/// <summary>
/// A guest byte range cut at cluster boundaries (qcow2 spec, == Cluster mapping ==: each guest
/// cluster has its own L2 entry), walked with <c>foreach</c> by reads, writes and discards alike.
/// A struct with a struct enumerator: walking a range allocates nothing.
/// </summary>
internal readonly struct GuestClusterRange(long offset, long length, int clusterBits)
{
    public Enumerator GetEnumerator() => new(offset, length, clusterBits);

    /// <summary>One cluster's part of the range.</summary>
    /// <param name="GuestCluster">The guest cluster number.</param>
    /// <param name="Start">The part's first byte within the cluster.</param>
    /// <param name="Length">The part's length in bytes (to the cluster's end or the range's).</param>
    /// <param name="Done">Bytes of the range before this part (where the part starts in the caller's buffers).</param>
    public readonly record struct Step(long GuestCluster, int Start, int Length, long Done);

    public struct Enumerator(long offset, long length, int clusterBits)
    {
        private long _done;

        public Step Current { get; private set; }

        public bool MoveNext()
        {
            if (_done >= length)
            {
                return false;
            }
            long position = offset + _done;
            long clusterSize = 1L << clusterBits;
            int start = (int)(position & (clusterSize - 1));
            int part = (int)Math.Min(clusterSize - start, length - _done);
            Current = new Step(position >> clusterBits, start, part, _done);
            _done += part;
            return true;
        }
    }
}
