using XenDisk.Backend.ControlPlane;
using XenDisk.Service.Control;

namespace XenDisk.Service.Maintenance;

/// <summary>What a resize request came to: the device and its size, or why it was refused.</summary>
internal sealed record ResizeOutcome(string? BackendPath, ResizeReport? Report, string? Refusal)
{
    public static ResizeOutcome Refused(string reason) => new(null, null, reason);
}

/// <summary>
/// The control socket's resize command: re-reads an attached disk's size now and tells its guest when
/// it changed (after an <c>lvextend</c>, a grown file or a resized LUN), instead of waiting for the
/// backend's periodic look (<see cref="BackendOptions.SizeCheckInterval"/>). The work is the device's
/// own online resize, under its control lock.
/// </summary>
internal sealed class DeviceResizer(BlockBackend backend)
{
    public async Task<ResizeOutcome> ResizeAsync(string? device, CancellationToken cancellationToken)
    {
        if (!DeviceSelector.TryParse(device, out DeviceSelector? selector, out string? refusal))
        {
            return ResizeOutcome.Refused(refusal!);
        }

        if (selector!.FindIn(backend) is not { } path)
        {
            return ResizeOutcome.Refused($"No device {selector} is served by this xendisk (xendisk status lists its devices).");
        }

        long before = SizeOf(path);
        bool changed;
        try
        {
            changed = await backend.ResizeAsync(path, cancellationToken).ConfigureAwait(false);
        }
        catch (KeyNotFoundException)
        {
            return ResizeOutcome.Refused($"{path} was detached meanwhile.");
        }

        long after = SizeOf(path);
        if (after < 0)
        {
            return ResizeOutcome.Refused($"{path} has no open disk (it is not connected, or it was detached meanwhile).");
        }

        return new ResizeOutcome(path, new ResizeReport(changed ? before : after, after, changed), null);
    }

    /// <summary>The size the device's open disk has now, or -1 when it has none.</summary>
    private long SizeOf(string backendPath) =>
        backend.Devices.FirstOrDefault(d => d.BackendPath == backendPath)?.Disk?.SizeBytes ?? -1;
}
