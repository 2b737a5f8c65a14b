using XenDisk.Storage;

namespace XenDisk.Backend.DataPlane;

/// <summary>What a publication covered: the contexts it may now answer, its outcome, and an exception the device threw (a broken contract).</summary>
internal delegate void PublishedHandler(ReadOnlySpan<int> contexts, IoStatus status, Exception? failure);

/// <summary>
/// Group commit of one ring's overlay mapping writes (<see cref="IGroupCommitDevice"/>). An I/O
/// thread whose write changed the mapping joins the group instead of writing the mapping itself.
/// If no publication is running it leads: it publishes, answers every request that had joined
/// before the publication began, and repeats while more have joined meanwhile. Otherwise it leaves
/// its request with the leader and goes back for more work. So the I/O threads never queue on the
/// overlay's write-back lock, and under load one mapping write covers every allocating request
/// that finished during the previous one, instead of one write (and one lock hand-off) each.
/// Capacity is the ring's size (a request joins at most once), so joining never allocates or fails.
/// </summary>
internal sealed class PublicationGroup
{
    private readonly Lock _lock = new();
    private readonly IGroupCommitDevice _device;
    private readonly PublishedHandler _published;
    private readonly int[] _waiting;
    // Only the leader touches this: the requests the running publication covers.
    private readonly int[] _covered;
    private int _count;
    private bool _leading;

    public PublicationGroup(IGroupCommitDevice device, int capacity, PublishedHandler published)
    {
        _device = device;
        _published = published;
        _waiting = new int[capacity];
        _covered = new int[capacity];
    }

    public IGroupCommitDevice Device => _device;

    /// <summary>
    /// Hands over <paramref name="context"/>, whose write returned with its mapping unpublished. Returns
    /// at once when another thread leads; otherwise leads until nobody waits. Each request reaches the
    /// handler exactly once, after a publication that began after it joined.
    /// </summary>
    public void Join(int context)
    {
        lock (_lock)
        {
            _waiting[_count++] = context;
            if (_leading)
            {
                return;
            }

            _leading = true;
        }

        while (true)
        {
            int count;
            lock (_lock)
            {
                count = _count;
                if (count == 0)
                {
                    _leading = false;
                    return;
                }

                Array.Copy(_waiting, _covered, count);
                _count = 0;
            }

            // Every covered request's mapping change was in memory before it joined, so before this
            // publication takes its snapshot.
            IoStatus status;
            Exception? failure = null;
            try
            {
                status = _device.Publish();
            }
            catch (Exception exception)
            {
                status = IoStatus.IoError;
                failure = exception;
            }

            _published(_covered.AsSpan(0, count), status, failure);
        }
    }
}
