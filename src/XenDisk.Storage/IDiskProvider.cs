namespace XenDisk.Storage;

/// <summary>
/// Turns the toolstack's description of a disk (the xenstore "params" or hotplug target string, and
/// the access mode) into an open <see cref="IBlockDevice"/>. The raw provider opens files and block
/// devices; the copy-on-write layer supplies a provider that understands overlays.
/// Throws <see cref="StorageException"/> with an operator-readable message when the disk cannot be opened.
/// </summary>
public interface IDiskProvider
{
    IBlockDevice Open(DiskSpecification specification);
}

/// <summary>What the toolstack asked for.</summary>
/// <param name="Target">The "params" key (or the hotplug "target" string): a path, or a provider-specific description.</param>
/// <param name="ReadOnly">"mode" is "r" (or the CoW description says so).</param>
/// <param name="Type">The toolstack's "type" key ("phy", "file", ...), informational.</param>
public sealed record DiskSpecification(string Target, bool ReadOnly, string? Type = null);
