using System.Globalization;
using Tmds.Linux;

namespace XenDisk.Xen.Native;

/// <summary>
/// <see cref="IXenPlatform"/> on real Xen through libxengnttab, libxenevtchn and libxenstore.
/// Run <see cref="XenEnvironment.Probe()"/> first to tell an operator what is missing; this type
/// only reports the first call that failed.
/// </summary>
public sealed class NativeXenPlatform : IXenPlatform
{
    /// <summary>The xenstore key, relative to this domain's home (/local/domain/N), holding its domain id.</summary>
    private const string DomainIdKey = "domid";

    private NativeXenPlatform(uint localDomainId)
    {
        LocalDomainId = localDomainId;
    }

    public uint LocalDomainId { get; }

    public string Description => $"xen (native, domain {LocalDomainId.ToString(CultureInfo.InvariantCulture)})";

    /// <summary>
    /// Connects to xenstore once to learn the local domain id: the "domid" key relative to the
    /// connection's home, which libxl writes for every guest and xen-init-dom0 for dom0; dom0 set
    /// up without it counts as 0. Throws <see cref="XenException"/> naming xs_open when xenstore is
    /// unreachable, and naming xs_read when the key holds something that is not a domain id.
    /// </summary>
    public static NativeXenPlatform Open()
    {
        using NativeXenStore xenStore = NativeXenStore.Open();
        string? text = xenStore.Read(XenStoreTransaction.None, DomainIdKey);
        if (text is null)
        {
            return new NativeXenPlatform(0);
        }

        if (!uint.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out uint domainId) || domainId > MaxDomainId)
        {
            throw new XenException("xs_read", LibC.EINVAL, $"xenstore key '{DomainIdKey}' holds '{text}', not a domain id");
        }

        return new NativeXenPlatform(domainId);
    }

    public IGrantTable OpenGrantTable() => NativeGrantTable.Open();

    public IEventChannels OpenEventChannels() => NativeEventChannels.Open();

    public IXenStore OpenXenStore() => NativeXenStore.Open();

    /// <summary>DOMID_FIRST_RESERVED - 1 (xen.h): ids from 0x7FF0 up name special domains, never a real one.</summary>
    private const uint MaxDomainId = 0x7FEF;
}
