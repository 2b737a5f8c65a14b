using System.Globalization;
using XenDisk.Abi;

namespace XenDisk.Xen.Simulated;

/// <summary>
/// What libxl does for a disk (tools/libs/light/libxl_disk.c, libxl_device.c): writes the backend
/// and frontend directories with their permissions in one transaction, and on detach asks the
/// backend to close (online=0, state=Closing), waits for Closed, then removes both directories.
/// It speaks through its own dom0 xenstore connection, as the toolstack does.
/// </summary>
public sealed class SimulatedToolstack : IDisposable
{
    private readonly SimulatedHypervisor _hypervisor;
    private readonly IXenStore _store;

    public SimulatedToolstack(SimulatedHypervisor hypervisor)
    {
        ArgumentNullException.ThrowIfNull(hypervisor);
        _hypervisor = hypervisor;
        _store = hypervisor.Platform(hypervisor.Dom0).OpenXenStore();
    }

    /// <summary>/local/domain/{backend}/backend/{kind}/{guest}/{deviceId}.</summary>
    public static string BackendPathFor(SimulatedDomain backend, string kind, SimulatedDomain guest, int deviceId) =>
        string.Create(CultureInfo.InvariantCulture, $"{backend.XenStorePath}/backend/{kind}/{guest.Id}/{deviceId}");

    /// <summary>/local/domain/{guest}/device/vbd/{deviceId}.</summary>
    public static string FrontendPathFor(SimulatedDomain guest, int deviceId) =>
        string.Create(CultureInfo.InvariantCulture, $"{guest.XenStorePath}/device/vbd/{deviceId}");

    /// <summary>
    /// Writes the device's nodes. Backend directory: owned by the backend domain, readable by the
    /// guest; frontend directory: owned by the guest, readable by the backend domain (libxl's
    /// backend_perms / frontend_perms). Both appear at once: one transaction, retried on EAGAIN.
    /// </summary>
    public DiskAttachment AttachDisk(SimulatedDomain guest, int deviceId, string target, bool readOnly,
        SimulatedDomain? backend = null, string kind = "vbd", string? script = null)
    {
        ArgumentNullException.ThrowIfNull(guest);
        ArgumentNullException.ThrowIfNull(target);
        ArgumentOutOfRangeException.ThrowIfNegative(deviceId);
        backend ??= _hypervisor.Dom0;
        string backendPath = BackendPathFor(backend, kind, guest, deviceId);
        string frontendPath = FrontendPathFor(guest, deviceId);
        string guestId = guest.Id.ToString(CultureInfo.InvariantCulture);
        string backendId = backend.Id.ToString(CultureInfo.InvariantCulture);
        string deviceText = deviceId.ToString(CultureInfo.InvariantCulture);
        string initialising = XenbusStateText.ToWire(XenbusState.Initialising);

        RunTransaction(t =>
        {
            if (_store.Read(t, backendPath + "/" + BlkifKeys.State) is not null || _store.Read(t, frontendPath + "/" + BlkifKeys.State) is not null)
            {
                throw new InvalidOperationException($"Device {deviceId} of domain {guest.Id} is already attached.");
            }

            _store.Mkdir(t, backendPath);
            _store.SetPermissions(t, backendPath, [new(backend.Id, XenStoreAccess.None), new(guest.Id, XenStoreAccess.Read)]);
            _store.Write(t, backendPath + "/" + BlkifKeys.Frontend, frontendPath);
            _store.Write(t, backendPath + "/" + BlkifKeys.FrontendId, guestId);
            _store.Write(t, backendPath + "/" + BlkifKeys.Params, target);
            _store.Write(t, backendPath + "/" + BlkifKeys.Mode, readOnly ? "r" : "w");
            _store.Write(t, backendPath + "/" + BlkifKeys.Type, "phy");
            _store.Write(t, backendPath + "/" + BlkifKeys.Online, "1");
            _store.Write(t, backendPath + "/" + BlkifKeys.Removable, "0");
            _store.Write(t, backendPath + "/" + BlkifKeys.DeviceType, "disk");
            if (script is not null)
            {
                _store.Write(t, backendPath + "/" + BlkifKeys.Script, script);
            }

            _store.Write(t, backendPath + "/" + BlkifKeys.State, initialising);

            _store.Mkdir(t, frontendPath);
            _store.SetPermissions(t, frontendPath, [new(guest.Id, XenStoreAccess.None), new(backend.Id, XenStoreAccess.Read)]);
            _store.Write(t, frontendPath + "/backend", backendPath);
            _store.Write(t, frontendPath + "/backend-id", backendId);
            _store.Write(t, frontendPath + "/" + BlkifKeys.VirtualDevice, deviceText);
            _store.Write(t, frontendPath + "/" + BlkifKeys.DeviceType, "disk");
            _store.Write(t, frontendPath + "/" + BlkifKeys.State, initialising);
        });

        return new DiskAttachment(guest, backend, deviceId, kind, target, readOnly, backendPath, frontendPath);
    }

    /// <summary>
    /// libxl__initiate_device_generic_remove: online=0 and state=Closing in the backend directory,
    /// then wait for the backend to reach Closed and remove both directories. On time-out a
    /// <see cref="TimeoutException"/> is thrown and the nodes stay (see <see cref="RemoveDeviceNodes"/>).
    /// </summary>
    public async Task DetachDiskAsync(DiskAttachment attachment, TimeSpan timeout)
    {
        ArgumentNullException.ThrowIfNull(attachment);
        RunTransaction(t =>
        {
            _store.Write(t, attachment.BackendPath + "/" + BlkifKeys.Online, "0");
            _store.Write(t, attachment.BackendPath + "/" + BlkifKeys.State, XenbusStateText.ToWire(XenbusState.Closing));
        });

        await WaitForBackendStateAsync(attachment, XenbusState.Closed, timeout).ConfigureAwait(false);
        RemoveDeviceNodes(attachment);
    }

    /// <summary>Removes both directories without asking the backend (libxl's forced removal).</summary>
    public void RemoveDeviceNodes(DiskAttachment attachment)
    {
        ArgumentNullException.ThrowIfNull(attachment);
        RunTransaction(t =>
        {
            _store.Remove(t, attachment.FrontendPath);
            _store.Remove(t, attachment.BackendPath);
        });
    }

    public XenbusState? ReadBackendState(DiskAttachment attachment) => ReadState(attachment.BackendPath);

    public XenbusState? ReadFrontendState(DiskAttachment attachment) => ReadState(attachment.FrontendPath);

    /// <summary>Waits (through a watch) until the backend's state is <paramref name="state"/>; throws <see cref="TimeoutException"/>.</summary>
    public Task WaitForBackendStateAsync(DiskAttachment attachment, XenbusState state, TimeSpan timeout)
    {
        ArgumentNullException.ThrowIfNull(attachment);
        return WaitForStateAsync(attachment.BackendPath, state, timeout);
    }

    /// <summary>Waits (through a watch) until the frontend's state is <paramref name="state"/>; throws <see cref="TimeoutException"/>.</summary>
    public Task WaitForFrontendStateAsync(DiskAttachment attachment, XenbusState state, TimeSpan timeout)
    {
        ArgumentNullException.ThrowIfNull(attachment);
        return WaitForStateAsync(attachment.FrontendPath, state, timeout);
    }

    /// <summary>
    /// Waits (through a watch) until the backend key <paramref name="key"/> (null while absent)
    /// satisfies <paramref name="condition"/>, and returns its value; throws <see cref="TimeoutException"/>.
    /// </summary>
    public async Task<string?> WaitForBackendKeyAsync(DiskAttachment attachment, string key, Func<string?, bool> condition, TimeSpan timeout)
    {
        ArgumentNullException.ThrowIfNull(attachment);
        ArgumentNullException.ThrowIfNull(condition);
        string path = attachment.BackendPath + "/" + key;
        using IXenStore store = _hypervisor.Platform(_hypervisor.Dom0).OpenXenStore();
        using var cancellation = new CancellationTokenSource(timeout);
        store.Watch(path, "toolstack-wait");
        string? current = null;
        try
        {
            while (true)
            {
                current = store.Read(XenStoreTransaction.None, path);
                if (condition(current))
                {
                    return current;
                }

                await store.ReadWatchAsync(cancellation.Token).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (cancellation.IsCancellationRequested)
        {
            throw new TimeoutException($"{path} did not reach the expected value within {timeout} (it is {current ?? "absent"}).");
        }
    }

    public void Dispose() => _store.Dispose();

    private async Task WaitForStateAsync(string directory, XenbusState state, TimeSpan timeout)
    {
        string statePath = directory + "/" + BlkifKeys.State;
        using IXenStore store = _hypervisor.Platform(_hypervisor.Dom0).OpenXenStore();
        using var cancellation = new CancellationTokenSource(timeout);
        store.Watch(statePath, "toolstack-wait");
        XenbusState? current = null;
        try
        {
            while (true)
            {
                current = ReadState(store, directory);
                if (current == state)
                {
                    return;
                }

                await store.ReadWatchAsync(cancellation.Token).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (cancellation.IsCancellationRequested)
        {
            throw new TimeoutException($"{statePath} did not become {state} within {timeout} (it is {current?.ToString() ?? "absent"}).");
        }
    }

    private XenbusState? ReadState(string directory) => ReadState(_store, directory);

    private static XenbusState? ReadState(IXenStore store, string directory)
    {
        string? text = store.Read(XenStoreTransaction.None, directory + "/" + BlkifKeys.State);
        return text is not null && XenbusStateText.TryParse(text, out XenbusState parsed) ? parsed : null;
    }

    private void RunTransaction(Action<XenStoreTransaction> body)
    {
        while (true)
        {
            XenStoreTransaction t = _store.BeginTransaction();
            try
            {
                body(t);
            }
            catch
            {
                _store.EndTransaction(t, abort: true);
                throw;
            }

            if (_store.EndTransaction(t))
            {
                return;
            }
        }
    }
}
