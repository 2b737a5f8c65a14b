using XenDisk.Abi;
using XenDisk.Xen;
using XenDisk.Xen.Simulated;

namespace XenDisk.Xen.Simulated.Tests;

public sealed class ToolstackTests : IDisposable
{
    private static readonly XenStoreTransaction None = XenStoreTransaction.None;
    private readonly SimulatedHypervisor _hypervisor = new();
    private readonly SimulatedToolstack _toolstack;
    private readonly SimulatedDomain _guest;

    public ToolstackTests()
    {
        _toolstack = new SimulatedToolstack(_hypervisor);
        _guest = _hypervisor.CreateDomain("guest");
    }

    public void Dispose()
    {
        _toolstack.Dispose();
        _hypervisor.Dispose();
    }

    [Fact]
    public void AttachDisk_writes_the_libxl_layout_with_permissions()
    {
        DiskAttachment disk = _toolstack.AttachDisk(_guest, 51712, "/images/disk.qcow2", readOnly: true, script: "block");
        using IXenStore store = _hypervisor.Platform(_hypervisor.Dom0).OpenXenStore();
        string b = $"/local/domain/0/backend/vbd/{_guest.Id}/51712";
        string f = $"/local/domain/{_guest.Id}/device/vbd/51712";
        Assert.Equal(b, disk.BackendPath);
        Assert.Equal(f, disk.FrontendPath);

        Assert.Equal(f, store.Read(None, b + "/frontend"));
        Assert.Equal(_guest.Id.ToString(System.Globalization.CultureInfo.InvariantCulture), store.Read(None, b + "/frontend-id"));
        Assert.Equal("/images/disk.qcow2", store.Read(None, b + "/params"));
        Assert.Equal("r", store.Read(None, b + "/mode"));
        Assert.Equal("phy", store.Read(None, b + "/type"));
        Assert.Equal("1", store.Read(None, b + "/online"));
        Assert.Equal("1", store.Read(None, b + "/state"));
        Assert.Equal("0", store.Read(None, b + "/removable"));
        Assert.Equal("disk", store.Read(None, b + "/device-type"));
        Assert.Equal("block", store.Read(None, b + "/script"));
        Assert.Equal(b, store.Read(None, f + "/backend"));
        Assert.Equal("0", store.Read(None, f + "/backend-id"));
        Assert.Equal("1", store.Read(None, f + "/state"));
        Assert.Equal("51712", store.Read(None, f + "/virtual-device"));
        Assert.Equal("disk", store.Read(None, f + "/device-type"));

        Assert.Equal([new(0, XenStoreAccess.None), new(_guest.Id, XenStoreAccess.Read)], store.GetPermissions(None, b + "/params"));
        Assert.Equal([new(_guest.Id, XenStoreAccess.None), new(0, XenStoreAccess.Read)], store.GetPermissions(None, f + "/state"));

        // The guest can read its backend but not change it, and can write its own state.
        using IXenStore guestStore = _hypervisor.Platform(_guest).OpenXenStore();
        Assert.Equal("r", guestStore.Read(None, b + "/mode"));
        Assert.Throws<XenStoreException>(() => guestStore.Write(None, b + "/mode", "w"));
        guestStore.Write(None, f + "/state", "3");
    }

    [Fact]
    public void A_driver_domain_backend_owns_its_directory_and_reads_the_frontend()
    {
        SimulatedDomain driver = _hypervisor.CreateDomain("driver");
        DiskAttachment disk = _toolstack.AttachDisk(_guest, 768, "/dev/x", readOnly: false, backend: driver);
        Assert.StartsWith($"/local/domain/{driver.Id}/backend/vbd/{_guest.Id}/768", disk.BackendPath, StringComparison.Ordinal);

        using IXenStore driverStore = _hypervisor.Platform(driver).OpenXenStore();
        driverStore.Write(None, disk.BackendPath + "/state", "2");
        Assert.Equal("1", driverStore.Read(None, disk.FrontendPath + "/state"));
        Assert.Throws<XenStoreException>(() => driverStore.Write(None, disk.FrontendPath + "/state", "6"));
    }

    [Fact]
    public void Attaching_the_same_device_twice_fails()
    {
        _toolstack.AttachDisk(_guest, 1, "a", false);
        Assert.Throws<InvalidOperationException>(() => _toolstack.AttachDisk(_guest, 1, "a", false));
    }

    [Fact]
    public void Attach_retries_when_its_transaction_conflicts()
    {
        _hypervisor.ForceXenStoreConflicts(2);
        DiskAttachment disk = _toolstack.AttachDisk(_guest, 2, "t", false);
        Assert.Equal(XenbusState.Initialising, _toolstack.ReadBackendState(disk));
    }

    [Fact]
    public async Task Detach_asks_the_backend_to_close_waits_for_Closed_and_removes_both_nodes()
    {
        DiskAttachment disk = _toolstack.AttachDisk(_guest, 51728, "img", false);
        using IXenStore backend = _hypervisor.Platform(_hypervisor.Dom0).OpenXenStore();
        backend.Watch(disk.BackendPath + "/state", "b");

        Task detach = _toolstack.DetachDiskAsync(disk, TimeSpan.FromSeconds(10));

        // Play the backend: see Closing with online=0, then go Closed.
        while (backend.Read(None, disk.BackendPath + "/state") != "5")
        {
            await backend.ReadWatchAsync(CancellationToken.None).AsTask().WaitAsync(TimeSpan.FromSeconds(10));
        }

        Assert.Equal("0", backend.Read(None, disk.BackendPath + "/online"));
        Assert.False(detach.IsCompleted);
        backend.Write(None, disk.BackendPath + "/state", "6");
        await detach.WaitAsync(TimeSpan.FromSeconds(10));

        Assert.Null(backend.Read(None, disk.BackendPath));
        Assert.Null(backend.Read(None, disk.FrontendPath));
    }

    [Fact]
    public async Task Detach_times_out_when_the_backend_never_closes_and_leaves_the_nodes()
    {
        DiskAttachment disk = _toolstack.AttachDisk(_guest, 3, "img", false);
        await Assert.ThrowsAsync<TimeoutException>(() => _toolstack.DetachDiskAsync(disk, TimeSpan.FromMilliseconds(100)));
        Assert.Equal(XenbusState.Closing, _toolstack.ReadBackendState(disk));
        _toolstack.RemoveDeviceNodes(disk);
        Assert.Null(_toolstack.ReadBackendState(disk));
    }
}
