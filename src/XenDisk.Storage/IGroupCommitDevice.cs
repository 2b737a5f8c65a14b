namespace XenDisk.Storage;

/// <summary>
/// A device whose writes may change a mapping (an overlay allocating space) that must be written into
/// its file before the write is answered, so that the answer outlives a crash of the service. A
/// caller that runs many writes at once can gather those mapping writes into one (group commit):
/// each write leaves its mapping change in memory, and one <see cref="Publish"/> afterwards writes
/// everything changed so far, instead of one mapping write per request, each waiting for the last.
/// A caller that answers a write from <see cref="WriteUnpublished"/> before a <see cref="Publish"/>
/// that began after it returned has broken the device's crash promise.
/// </summary>
public interface IGroupCommitDevice : IBlockDevice
{
    /// <summary>
    /// <see cref="IBlockDevice.Write"/>, except that a changed mapping is not written into the file:
    /// <paramref name="publish"/> says whether it changed, and then the write must not be answered
    /// before a <see cref="Publish"/> that starts after this call returns has succeeded (whatever
    /// the status: a write that failed part-way may have mapped some of its units).
    /// </summary>
    IoStatus WriteUnpublished(long offset, ReadOnlySpan<IoBuffer> buffers, out bool publish);

    /// <summary>
    /// Writes into the file the mapping changed by every <see cref="WriteUnpublished"/> that returned
    /// before this call began (and possibly more), without a flush unless ordering needs one. Any thread.
    /// </summary>
    IoStatus Publish();
}
