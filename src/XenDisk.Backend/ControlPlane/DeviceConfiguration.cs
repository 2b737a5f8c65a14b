using XenDisk.Abi;

namespace XenDisk.Backend.ControlPlane;

/// <summary>
/// The toolstack's description of one device, read from the backend directory and validated
/// (xen docs/misc/xenstore-paths "backend/vbd"; Linux xen-blkback xenbus.c backend_changed).
/// </summary>
/// <param name="Target">"params": what to open.</param>
/// <param name="ReadOnly">"mode" is "r".</param>
/// <param name="Mode">"mode" as written: "r", "w", or "w!" (writable even when shared).</param>
/// <param name="Type">"type" ("phy", "file", ...), informational.</param>
/// <param name="FrontendPath">"frontend": the guest's device directory.</param>
/// <param name="FrontendDomainId">"frontend-id".</param>
internal sealed record DeviceConfiguration(string Target, bool ReadOnly, string Mode, string? Type, string FrontendPath, uint FrontendDomainId)
{
    /// <summary>
    /// Reads and checks the toolstack's keys. <paramref name="read"/> reads a key of the backend
    /// directory (null when absent); <paramref name="domainPath"/> is xs_get_domain_path.
    /// Throws <see cref="DeviceSetupException"/> naming the first key that is missing or malformed.
    /// </summary>
    public static DeviceConfiguration Read(Func<string, string?> read, uint pathDomainId, int deviceId, Func<uint, string> domainPath)
    {
        string target = read(BlkifKeys.Params) ?? throw new DeviceSetupException("missing \"params\": the toolstack did not say which disk to serve");
        if (string.IsNullOrWhiteSpace(target))
        {
            throw new DeviceSetupException("\"params\" is empty: the toolstack did not say which disk to serve");
        }

        string mode = read(BlkifKeys.Mode) ?? throw new DeviceSetupException("missing \"mode\" (expected r, w or w!)");
        bool readOnly = mode switch
        {
            "r" => true,
            "w" or "w!" => false,
            _ => throw new DeviceSetupException($"bad \"mode\" \"{Printable(mode)}\" (expected r, w or w!)"),
        };

        string? type = read(BlkifKeys.Type);

        string frontendIdText = read(BlkifKeys.FrontendId) ?? throw new DeviceSetupException("missing \"frontend-id\"");
        if (!BackendPaths.TryParseDomainId(frontendIdText, out uint frontendDomainId))
        {
            throw new DeviceSetupException($"bad \"frontend-id\" \"{Printable(frontendIdText)}\" (expected a guest domain id)");
        }

        if (frontendDomainId != pathDomainId)
        {
            throw new DeviceSetupException($"\"frontend-id\" {frontendDomainId} does not match the backend path's domain {pathDomainId}");
        }

        string frontendPath = read(BlkifKeys.Frontend) ?? throw new DeviceSetupException("missing \"frontend\"");
        if (!IsFrontendPathOf(frontendPath, domainPath(frontendDomainId), deviceId))
        {
            throw new DeviceSetupException(
                $"bad \"frontend\" \"{Printable(frontendPath)}\" (expected {domainPath(frontendDomainId)}/device/<class>/{deviceId})");
        }

        return new DeviceConfiguration(target, readOnly, mode, type, frontendPath, frontendDomainId);
    }

    /// <summary>
    /// The frontend directory must be the guest's own device node for this device id: anything else
    /// would let one guest's configuration point us at another domain's keys.
    /// </summary>
    private static bool IsFrontendPathOf(string frontendPath, string guestDomainPath, int deviceId)
    {
        string prefix = guestDomainPath + "/device/";
        if (!frontendPath.StartsWith(prefix, StringComparison.Ordinal))
        {
            return false;
        }

        string[] rest = frontendPath[prefix.Length..].Split('/');
        return rest.Length == 2
            && BackendPaths.IsPathComponent(rest[0])
            && BackendPaths.TryParseDeviceId(rest[1], out int id)
            && id == deviceId;
    }

    /// <summary>Guest- or toolstack-written text quoted in an error message: bounded and without control characters.</summary>
    internal static string Printable(string text)
    {
        const int MaxQuoted = 64;
        Span<char> buffer = stackalloc char[Math.Min(text.Length, MaxQuoted)];
        for (int i = 0; i < buffer.Length; i++)
        {
            buffer[i] = char.IsControl(text[i]) ? '?' : text[i];
        }

        return text.Length > MaxQuoted ? new string(buffer) + "..." : new string(buffer);
    }
}
