using System.Text;
using XenDisk.Cow.Provider;
using XenDisk.Storage;

namespace XenDisk.Fuzz.Targets;

/// <summary>
/// The disk target string (xenstore "params", copied verbatim from the xl disk line after target=):
/// <c>raw:PATH</c>, <c>qcow2:PATH[,policy=]</c>, <c>cow:BASE,OVERLAY[,options]</c> or a bare absolute
/// path. Refusals are <see cref="StorageException"/>s; a finding is any other exception or an accepted
/// target whose parts break the rules the providers rely on (absolute paths without commas or control
/// characters, sizes that are powers of two within range, the fields of its kind present).
/// </summary>
public sealed class CowTargetParserTarget : FuzzTarget
{
    public override string Name => "cow-target";

    public override string Description => "a disk target string (raw:, qcow2:, cow:BASE,OVERLAY,options)";

    public override FuzzOutcome Run(ReadOnlySpan<byte> input)
    {
        string text = Encoding.UTF8.GetString(input);
        CowTarget target;
        try
        {
            target = CowTarget.Parse(text);
        }
        catch (StorageException)
        {
            return FuzzOutcome.Refused;
        }
        string?[] paths = target.Kind == CowTargetKind.Cow ? [target.BasePath, target.OverlayPath] : [target.Path];
        // A bare absolute path is a plain phy: disk: the whole string is the path, commas included.
        bool bare = text.StartsWith('/');
        foreach (string? path in paths)
        {
            FuzzFindingException.Check(path is not null && Path.IsPathFullyQualified(path)
                && (bare ? path == text : !path.Contains(',', StringComparison.Ordinal)) && !path.AsSpan().ContainsAnyInRange('\0', '\u001f'),
                $"the {target.Kind} target \"{text}\" was accepted with the path \"{path}\"");
        }
        FuzzFindingException.Check(target.ClusterSize is null or >= 512 and <= 2 << 20 && (target.ClusterSize is null || int.IsPow2(target.ClusterSize.Value)),
            $"cluster={target.ClusterSize} was accepted from \"{text}\"");
        FuzzFindingException.Check(target.GrainSize is null or >= 512 and <= 64 << 10 && (target.GrainSize is null || int.IsPow2(target.GrainSize.Value)),
            $"grain={target.GrainSize} was accepted from \"{text}\"");
        FuzzFindingException.Check(target.BaseFormat is "raw" or "qcow2", $"base-format={target.BaseFormat} was accepted from \"{text}\"");
        FuzzFindingException.Check(target.Kind == CowTargetKind.Cow || (target.OverlayFormat is null && target.ClusterSize is null && target.GrainSize is null),
            $"cow: options were accepted on the {target.Kind} target \"{text}\"");

        return FuzzOutcome.Accepted;
    }
}
