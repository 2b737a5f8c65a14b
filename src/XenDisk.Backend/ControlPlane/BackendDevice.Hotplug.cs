using XenDisk.Abi;

namespace XenDisk.Backend.ControlPlane;

// libxl's hotplug contract (docs/E2E.md "Hotplug contract"): which devices are ours (the script filter),
// the disk-opened marker the script waits for, the connect gate a script-managed device waits at until
// its script reports hotplug-status, and the failure path that hands the reason to the script through
// InitWait instead of closing.
internal sealed partial class BackendDevice
{
    /// <summary>Where the hotplug script leaves its reason for failing (libxl prints it as "script: ...").</summary>
    private const string HotplugErrorKey = "hotplug-error";

    // A "script" key in the backend directory: libxl runs a hotplug script for this device.
    private bool _hotplugManaged;
    private bool _ignoreLogged;
    private bool _hotplugWaitLogged;
    private bool _hotplugErrorLogged;

    /// <summary>Applies the hotplug-script filter; a device that fails it is left entirely alone.</summary>
    private bool TryClaim()
    {
        string? filter = _context.Options.HotplugScriptFilter;
        if (filter is not null)
        {
            string script = ReadBackend(BlkifKeys.Script) ?? "";
            if (!string.Equals(Path.GetFileName(script), filter, StringComparison.Ordinal))
            {
                if (!_ignoreLogged)
                {
                    _ignoreLogged = true;
                    ControlPlaneLog.DeviceIgnored(_context.Logger, Name, DeviceConfiguration.Printable(script), filter);
                }

                return false;
            }
        }

        Volatile.Write(ref _claimed, true);
        ControlPlaneLog.DeviceDiscovered(_context.Logger, Name, FrontendDomainId, DeviceId);
        return true;
    }

    /// <summary>
    /// A script-managed device whose setup failed (its keys, or the disk open after InitWait): the
    /// "error" node and InitWait, in one transaction. libxl runs the hotplug script only once it sees exactly InitWait; the script
    /// finds the reason there and hands it to xl, and libxl then removes the device. Closed instead
    /// would leave libxl waiting out its 10 s with no reason given. Returns false (and the caller
    /// closes the device as usual) when the toolstack is removing it already.
    /// </summary>
    private bool FailIntoInitWait(string reason)
    {
        bool written = CommitState(XenbusState.InitWait, t =>
        {
            if (IsBeingRemoved(t) || _context.Store.Directory(t, BackendPath) is null)
            {
                return false;
            }

            Write(t, BlkifKeys.Error, reason);
            Write(t, BlkifKeys.State, XenbusStateText.ToWire(XenbusState.InitWait));
            return true;
        });
        if (written)
        {
            _setUpFailed = true;
            ControlPlaneLog.FailedDeviceAwaitsHotplugScript(_context.Logger, Name);
        }

        return written;
    }

    /// <summary>
    /// The connect gate of a script-managed device: libxl accepts only InitWait until its hotplug
    /// script has run, and the script reports success as hotplug-status=connected (the gate
    /// xen-blkback keeps with the "physical-device" node that the block script writes). A device
    /// without a script key has no gate.
    /// </summary>
    private bool HotplugScriptDone()
    {
        if (!_hotplugManaged)
        {
            return true;
        }

        string? status = ReadBackend(BlkifKeys.HotplugStatus);
        if (status == "connected")
        {
            return true;
        }

        if (status == "error")
        {
            if (!_hotplugErrorLogged)
            {
                _hotplugErrorLogged = true;
                ControlPlaneLog.HotplugScriptFailed(_context.Logger, Name, DeviceConfiguration.Printable(ReadBackend(HotplugErrorKey) ?? ""));
            }
        }
        else if (!_hotplugWaitLogged)
        {
            _hotplugWaitLogged = true;
            ControlPlaneLog.AwaitingHotplugScript(_context.Logger, Name);
        }

        return false;
    }
}
