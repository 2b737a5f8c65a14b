using System.Globalization;
using XenDisk.Cow.Overlays;
using XenDisk.Cow.Policies;
using XenDisk.Storage;
using XenDisk.Storage.Iscsi;

namespace XenDisk.Cow.Provider;

/// <summary>What a disk target names (docs/E2E.md, "Target syntax").</summary>
public enum CowTargetKind
{
    /// <summary><c>raw:PATH</c>, or a bare absolute path (plain phy: disks).</summary>
    Raw,
    /// <summary><c>qcow2:PATH</c>: a qcow2 image whose backing chain comes from its headers.</summary>
    Qcow2,
    /// <summary><c>cow:BASE,OVERLAY[,options]</c>: a private overlay over a shared read-only base.</summary>
    Cow,
}

/// <summary>
/// A parsed disk target: the xenstore "params" node, which libxl copies verbatim from the text after
/// <c>target=</c> in the disk line. The kind prefix is required (a bare absolute path is raw): formats
/// are never probed, because a guest that writes a qcow2 header into its raw disk must not turn it
/// into a qcow2 image with a backing file of its choosing at the next start. Paths are absolute and
/// contain no commas (the comma separates paths and options).
/// </summary>
public sealed record CowTarget
{
    /// <summary>Options <c>cow:</c> accepts, for the refusal message.</summary>
    private const string CowOptionNames = "format, policy, cluster, grain, base-format";

    public required CowTargetKind Kind { get; init; }

    /// <summary>The image for <see cref="CowTargetKind.Raw"/> and <see cref="CowTargetKind.Qcow2"/>.</summary>
    public string? Path { get; init; }

    /// <summary>The shared read-only base of a <c>cow:</c> device.</summary>
    public string? BasePath { get; init; }

    /// <summary>The private overlay of a <c>cow:</c> device.</summary>
    public string? OverlayPath { get; init; }

    /// <summary><c>format=</c> (qcow2, bitmap); null means the provider's default.</summary>
    public OverlayFormat? OverlayFormat { get; init; }

    /// <summary><c>policy=</c> (sync, flush, lazy, transient); null means the provider's default.</summary>
    public MetadataPolicy? Policy { get; init; }

    /// <summary><c>cluster=</c>: cluster size of a new qcow2 overlay; null means the provider's default.</summary>
    public int? ClusterSize { get; init; }

    /// <summary><c>grain=</c>: grain size of a new bitmap overlay; null means the provider's default.</summary>
    public int? GrainSize { get; init; }

    /// <summary><c>base-format=</c>: "raw" (the default) or "qcow2". Never probed.</summary>
    public string BaseFormat { get; init; } = "raw";

    /// <summary>Parses <paramref name="target"/>; throws <see cref="StorageException"/> with a message for the operator.</summary>
    public static CowTarget Parse(string? target)
    {
        if (string.IsNullOrWhiteSpace(target))
        {
            throw Refuse("No disk target was given (the \"params\" key is empty).");
        }
        if (target.AsSpan().ContainsAnyInRange('\0', '\u001f'))
        {
            throw Refuse("The disk target contains control characters; refusing it.");
        }
        if (target.StartsWith('/'))
        {
            // A plain phy: disk: the whole string is the path (the raw provider checks it).
            return new CowTarget { Kind = CowTargetKind.Raw, Path = target };
        }
        int colon = target.IndexOf(':');
        if (colon <= 0)
        {
            throw Refuse($"Disk target \"{target}\" is a relative path; give an absolute path, or raw:PATH, qcow2:PATH or cow:BASE,OVERLAY[,options].");
        }
        if (IscsiUrl.IsIscsi(target) && !target.Contains(',', StringComparison.Ordinal))
        {
            // A bare LUN URL is a plain disk, as a bare absolute path is.
            return new CowTarget { Kind = CowTargetKind.Raw, Path = CheckPath(target, "image", target) };
        }
        string kind = target[..colon];
        string[] parts = target[(colon + 1)..].Split(',');
        switch (kind)
        {
            case "raw":
                if (parts.Length > 1)
                {
                    throw Refuse($"Disk target \"{target}\": raw: takes one path and no options, and paths may not contain a comma.");
                }
                return new CowTarget { Kind = CowTargetKind.Raw, Path = CheckPath(parts[0], "image", target) };
            case "qcow2":
            {
                string path = CheckPath(parts[0], "image", target);
                Dictionary<string, string> options = ParseOptions(parts.AsSpan(1), target, "policy");
                return new CowTarget { Kind = CowTargetKind.Qcow2, Path = path, Policy = ParsePolicy(options, target) };
            }
            case "cow":
            {
                if (parts.Length < 2 || parts[1].Contains('=', StringComparison.Ordinal))
                {
                    throw Refuse($"Disk target \"{target}\": cow: needs a base and an overlay path, cow:BASE,OVERLAY[,options] (paths may not contain a comma).");
                }
                string basePath = CheckPath(parts[0], "base", target);
                string overlayPath = CheckPath(parts[1], "overlay", target);
                Dictionary<string, string> options = ParseOptions(parts.AsSpan(2), target, CowOptionNames);
                return new CowTarget
                {
                    Kind = CowTargetKind.Cow,
                    BasePath = basePath,
                    OverlayPath = overlayPath,
                    OverlayFormat = options.TryGetValue("format", out string? format)
                        ? Overlays.OverlayFormat.All.FirstOrDefault(f => f.Name == format)
                            ?? throw Refuse($"Disk target \"{target}\": format={format} is not an overlay format ({string.Join(" or ", Overlays.OverlayFormat.All)}).")
                        : null,
                    Policy = ParsePolicy(options, target),
                    ClusterSize = options.TryGetValue("cluster", out string? cluster) ? ParseSize(cluster, "cluster", 512, 2 << 20, target) : null,
                    GrainSize = options.TryGetValue("grain", out string? grain) ? ParseSize(grain, "grain", 512, 64 << 10, target) : null,
                    BaseFormat = options.TryGetValue("base-format", out string? baseFormat) ? baseFormat switch
                    {
                        "raw" or "qcow2" => baseFormat,
                        _ => throw Refuse($"Disk target \"{target}\": base-format={baseFormat} is not supported (raw or qcow2)."),
                    } : "raw",
                };
            }
            default:
                throw Refuse($"Unknown disk kind \"{kind}\" in target \"{target}\": use raw:PATH, qcow2:PATH or cow:BASE,OVERLAY[,options] (formats are never probed).");
        }
    }

    private static string CheckPath(string path, string role, string target)
    {
        if (path.Length == 0)
        {
            throw Refuse($"Disk target \"{target}\": the {role} path is empty.");
        }
        if (IscsiUrl.IsIscsi(path))
        {
            // An iSCSI LUN (iscsi://HOST[:PORT]/IQN/LUN) stands wherever a path does; kept in canonical form.
            try
            {
                return IscsiUrl.Parse(path).ToString();
            }
            catch (StorageException e)
            {
                throw Refuse($"Disk target \"{IscsiUrl.Redact(target)}\": the {role} is not a usable iSCSI URL: {e.Message}");
            }
        }
        if (!System.IO.Path.IsPathFullyQualified(path))
        {
            throw Refuse($"Disk target \"{target}\": the {role} path \"{path}\" is relative; give an absolute path.");
        }
        return System.IO.Path.GetFullPath(path);
    }

    private static Dictionary<string, string> ParseOptions(ReadOnlySpan<string> parts, string target, string known)
    {
        Dictionary<string, string> options = new(StringComparer.Ordinal);
        string[] names = known.Split(", ");
        foreach (string part in parts)
        {
            int equals = part.IndexOf('=');
            if (equals <= 0 || equals == part.Length - 1)
            {
                throw Refuse(part.StartsWith('/')
                    ? $"Disk target \"{target}\": \"{part}\" looks like a path after the paths; paths may not contain a comma."
                    : $"Disk target \"{target}\": \"{part}\" is not an option of the form key=value.");
            }
            string key = part[..equals];
            if (Array.IndexOf(names, key) < 0)
            {
                throw Refuse($"Disk target \"{target}\": unknown option \"{key}\" (known: {known}).");
            }
            if (!options.TryAdd(key, part[(equals + 1)..]))
            {
                throw Refuse($"Disk target \"{target}\": option \"{key}\" is given twice.");
            }
        }
        return options;
    }

    private static MetadataPolicy? ParsePolicy(Dictionary<string, string> options, string target)
    {
        if (!options.TryGetValue("policy", out string? policy))
        {
            return null;
        }
        return policy switch
        {
            "sync" => MetadataPolicy.Sync,
            "flush" => MetadataPolicy.Flush,
            "lazy" => MetadataPolicy.Lazy,
            "transient" => MetadataPolicy.Transient,
            _ => throw Refuse($"Disk target \"{target}\": policy={policy} is not a metadata policy (sync, flush, lazy or transient)."),
        };
    }

    /// <summary>A power-of-two size in bytes, with an optional k or m suffix (64k, 2M).</summary>
    private static int ParseSize(string text, string name, int minimum, int maximum, string target)
    {
        long multiplier = 1;
        string digits = text;
        if (text.EndsWith('k') || text.EndsWith('K'))
        {
            multiplier = 1024;
            digits = text[..^1];
        }
        else if (text.EndsWith('m') || text.EndsWith('M'))
        {
            multiplier = 1024 * 1024;
            digits = text[..^1];
        }
        if (!long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out long value)
            || value > maximum || value * multiplier < minimum || value * multiplier > maximum || !long.IsPow2(value * multiplier))
        {
            throw Refuse($"Disk target \"{target}\": {name}={text} must be a power of two from {Describe(minimum)} to {Describe(maximum)} (for example 64k).");
        }
        return (int)(value * multiplier);
    }

    private static string Describe(int bytes) => bytes >= 1 << 20 ? $"{bytes >> 20}M" : bytes >= 1024 ? $"{bytes >> 10}k" : bytes.ToString(CultureInfo.InvariantCulture);

    private static StorageException Refuse(string message) => new(message, errno: 22);
}
