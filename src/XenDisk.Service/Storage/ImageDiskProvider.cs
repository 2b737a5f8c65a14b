using XenDisk.Cow;
using XenDisk.Cow.Provider;
using XenDisk.Storage;

namespace XenDisk.Service.Storage;

/// <summary>
/// The service's <see cref="IDiskProvider"/>: parses the toolstack's target ("raw:PATH", a plain
/// absolute path, "qcow2:PATH" or "cow:BASE,OVERLAY,...") with <see cref="CowTarget"/>, checks every
/// path it names against the <see cref="ImageDirectoryPolicy"/> (a guest's toolstack entry must not
/// reach files outside the configured image directories), then lets the copy-on-write provider open
/// it. Backing files named inside qcow2 headers are checked by the copy-on-write provider itself,
/// against the same directories.
/// </summary>
public sealed class ImageDiskProvider : IDiskProvider
{
    private readonly CowDiskProvider _disks;
    private readonly ImageDirectoryPolicy _policy;

    public ImageDiskProvider(ImageDirectoryPolicy policy, CowProviderOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(policy);
        _policy = policy;
        _disks = new CowDiskProvider((options ?? new CowProviderOptions()) with { AllowedBaseDirectories = policy.AllowedDirectories });
    }

    /// <summary>The qcow2 images and bitmap overlays opened through this provider and still open (for telemetry).</summary>
    public IReadOnlyList<ICopyOnWriteImage> GetOpenOverlays() => _disks.GetOpenOverlays();

    public IBlockDevice Open(DiskSpecification specification)
    {
        ArgumentNullException.ThrowIfNull(specification);
        CowTarget target = CowTarget.Parse(specification.Target);
        foreach (string? path in (ReadOnlySpan<string?>)[target.Path, target.BasePath, target.OverlayPath])
        {
            if (path is not null)
            {
                _policy.Check(path);
            }
        }

        return _disks.Open(specification);
    }
}
