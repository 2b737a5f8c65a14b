namespace XenDisk.Xen.Native;

/// <summary>
/// What <see cref="XenEnvironment.Probe()"/> found: every reason this machine cannot run the native
/// backend, each a sentence an operator can act on. Empty means every check passed.
/// </summary>
public sealed record XenProbeResult(IReadOnlyList<string> Problems)
{
    /// <summary>True when nothing is missing: the devices exist and are accessible, xenstore is reachable and the libraries resolve.</summary>
    public bool IsUsable => Problems.Count == 0;

    public override string ToString() =>
        IsUsable ? "Xen is usable: devices, xenstore and libraries are present" : string.Join(Environment.NewLine, Problems);
}
