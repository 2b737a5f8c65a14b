using XenDisk.Storage.Iscsi;

namespace XenDisk.Storage;

/// <summary>
/// Opens <see cref="DiskSpecification.Target"/> as a <see cref="RawBlockDevice"/>: an absolute path to a
/// regular file (a raw image) or a block device. Refuses, with a <see cref="StorageException"/> an operator
/// can act on: an empty target, a relative path (unless <see cref="RawDiskProviderOptions.AllowRelativePaths"/>),
/// a missing path, a directory, a character device (such as /dev/null), FIFOs and sockets.
/// An <c>iscsi://HOST[:PORT]/IQN/LUN</c> target opens an <see cref="IscsiBlockDevice"/> when
/// <see cref="RawDiskProviderOptions.Iscsi"/> is set, and is refused otherwise.
/// </summary>
public sealed class RawDiskProvider : IDiskProvider
{
    private readonly RawDiskProviderOptions _options;

    public RawDiskProvider(RawDiskProviderOptions? options = null)
    {
        _options = options ?? new RawDiskProviderOptions();
    }

    /// <summary>How iSCSI LUNs are reached, or null when they are refused.</summary>
    public IscsiOptions? Iscsi => _options.Iscsi;

    public IBlockDevice Open(DiskSpecification specification)
    {
        ArgumentNullException.ThrowIfNull(specification);
        string target = specification.Target;
        if (string.IsNullOrWhiteSpace(target))
        {
            throw new StorageException("No disk path was given (the \"params\" key is empty).");
        }
        if (target.Contains('\0', StringComparison.Ordinal))
        {
            throw new StorageException("The disk path contains a NUL character; refusing it.");
        }
        if (IscsiUrl.IsIscsi(target))
        {
            IscsiOptions iscsi = _options.Iscsi ?? throw new StorageException(
                $"Disk target \"{IscsiUrl.Redact(target)}\" is an iSCSI LUN, and iSCSI is not enabled (add an Iscsi section to the service configuration).");
            return IscsiBlockDevice.Open(IscsiUrl.Parse(target), specification.ReadOnly, iscsi);
        }
        if (!System.IO.Path.IsPathRooted(target) && !_options.AllowRelativePaths)
        {
            throw new StorageException($"Disk path \"{target}\" is relative; give an absolute path (relative paths would depend on the backend's working directory).");
        }
        return RawBlockDevice.Open(target, specification.ReadOnly, _options.Device);
    }
}

/// <summary>Options for <see cref="RawDiskProvider"/>.</summary>
public sealed record RawDiskProviderOptions
{
    /// <summary>Accept paths relative to the backend's working directory (for tools and tests, not for a service).</summary>
    public bool AllowRelativePaths { get; init; }

    /// <summary>How each device is opened.</summary>
    public RawDeviceOptions Device { get; init; } = new();

    /// <summary>How iSCSI LUNs are reached (initiator name, CHAP from the configuration); null refuses iscsi:// targets.</summary>
    public IscsiOptions? Iscsi { get; init; }
}
