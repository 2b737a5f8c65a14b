namespace XenDisk.Xen;

/// <summary>
/// One ops table for everything the backend needs from Xen, in the spirit of QEMU's
/// include/hw/xen/xen_backend_ops.h: each Open* call returns a fresh handle, as xengnttab_open,
/// xenevtchn_open and xs_open do. Implemented by real Xen and by the simulated hypervisor.
/// </summary>
public interface IXenPlatform
{
    /// <summary>The domain this backend runs in (0 for dom0, otherwise a driver domain).</summary>
    uint LocalDomainId { get; }

    /// <summary>A short human description ("xen 4.17 (native)", "simulated").</summary>
    string Description { get; }

    IGrantTable OpenGrantTable();

    IEventChannels OpenEventChannels();

    IXenStore OpenXenStore();
}
