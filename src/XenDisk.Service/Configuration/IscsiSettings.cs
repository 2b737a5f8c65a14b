using System.Globalization;
using Microsoft.Extensions.Configuration;
using XenDisk.Service.Hosting;
using XenDisk.Storage.Iscsi;

namespace XenDisk.Service.Configuration;

/// <summary>
/// Section "Iscsi": how the service reaches iSCSI LUNs (iscsi://HOST[:PORT]/IQN/LUN targets). Disabled
/// unless <see cref="Enabled"/>: a disk line can then name no LUN at all. CHAP credentials live here and
/// only here (never in a disk line or a URL), and are never logged or shown in status.
/// </summary>
public sealed class IscsiSettings
{
    public const string SectionName = "Iscsi";

    public bool Enabled { get; set; }

    /// <summary>This host's iSCSI initiator name, which the targets' access lists admit.</summary>
    public string InitiatorName { get; set; } = IscsiOptions.DefaultInitiatorName;

    /// <summary>
    /// This host's SCSI-3 persistent reservation key, 1 to 16 hex digits, different on every host: an
    /// overlay on a LUN is reserved under it while this host serves it. Empty: overlays on LUNs are
    /// opened without a reservation (a single-host setup).
    /// </summary>
    public string ReservationKey { get; set; } = "";

    /// <summary>Ask for CRC32C header digests.</summary>
    public bool HeaderDigest { get; set; }

    public int QueueDepth { get; set; } = IscsiOptions.DefaultQueueDepth;

    public int CommandTimeoutSeconds { get; set; } = 30;

    /// <summary>CHAP credentials; the most specific entry that matches a LUN's portal and target wins.</summary>
    public List<IscsiCredentialSettings>? Credentials { get; set; }

    /// <summary>
    /// The section as the service would read it (its configuration file, then XENDISK_Iscsi__* variables),
    /// for the command-line tools: they reach LUNs with the host's initiator name and CHAP credentials.
    /// </summary>
    public static IscsiSettings ReadServiceConfiguration()
    {
        IscsiSettings settings = new();
        XenDiskServiceHost.BuildConfiguration(new ServeOptions()).GetSection(SectionName).Bind(settings);
        return settings;
    }

    /// <summary>Problems with the section, one sentence each naming its key.</summary>
    public IEnumerable<string> Problems()
    {
        if (!Enabled)
        {
            yield break;
        }
        if (string.IsNullOrWhiteSpace(InitiatorName) || !(InitiatorName.StartsWith("iqn.", StringComparison.Ordinal) || InitiatorName.StartsWith("eui.", StringComparison.Ordinal) || InitiatorName.StartsWith("naa.", StringComparison.Ordinal)))
        {
            yield return $"Iscsi:InitiatorName \"{InitiatorName}\" is not an iSCSI name (iqn., eui. or naa.).";
        }
        if (ReservationKey.Length > 0 && !TryParseKey(ReservationKey, out _))
        {
            yield return "Iscsi:ReservationKey must be 1 to 16 hexadecimal digits, not zero.";
        }
        if (QueueDepth is < 1 or > 1024)
        {
            yield return "Iscsi:QueueDepth must be from 1 to 1024.";
        }
        if (CommandTimeoutSeconds is < 1 or > 3600)
        {
            yield return "Iscsi:CommandTimeoutSeconds must be from 1 to 3600.";
        }
        foreach ((IscsiCredentialSettings credential, int index) in (Credentials ?? []).Select((c, i) => (c, i)))
        {
            if (string.IsNullOrEmpty(credential.User) || string.IsNullOrEmpty(credential.Secret))
            {
                yield return $"Iscsi:Credentials:{index} needs both User and Secret.";
            }
            if (string.IsNullOrEmpty(credential.Portal) && string.IsNullOrEmpty(credential.Target))
            {
                yield return $"Iscsi:Credentials:{index} must name a Portal (host:port), a Target (IQN), or both.";
            }
        }
    }

    /// <summary>The options the iSCSI devices use, or null when iSCSI is disabled; call after validation.</summary>
    public IscsiOptions? ToOptions()
    {
        if (!Enabled)
        {
            return null;
        }
        IscsiCredentialSettings[] credentials = [.. Credentials ?? []];
        return new IscsiOptions
        {
            InitiatorName = InitiatorName,
            HeaderDigest = HeaderDigest,
            QueueDepth = QueueDepth,
            CommandTimeout = TimeSpan.FromSeconds(CommandTimeoutSeconds),
            ReservationKey = ReservationKey.Length > 0 && TryParseKey(ReservationKey, out ulong key) ? key : 0,
            Credentials = url => Match(credentials, url),
        };
    }

    private static IscsiChap? Match(IscsiCredentialSettings[] credentials, IscsiUrl url)
    {
        IscsiCredentialSettings? best = null;
        int bestScore = 0;
        foreach (IscsiCredentialSettings credential in credentials)
        {
            bool portal = string.IsNullOrEmpty(credential.Portal) || string.Equals(credential.Portal, url.Portal, StringComparison.OrdinalIgnoreCase)
                || string.Equals(credential.Portal, url.Host, StringComparison.OrdinalIgnoreCase);
            bool target = string.IsNullOrEmpty(credential.Target) || string.Equals(credential.Target, url.TargetName, StringComparison.OrdinalIgnoreCase);
            if (!portal || !target)
            {
                continue;
            }
            // A target match is more specific than a portal match; both beat either.
            int score = (string.IsNullOrEmpty(credential.Target) ? 0 : 2) + (string.IsNullOrEmpty(credential.Portal) ? 0 : 1);
            if (score > bestScore)
            {
                best = credential;
                bestScore = score;
            }
        }
        return best == null ? null : new IscsiChap(best.User, best.Secret);
    }

    public static bool TryParseKey(string text, out ulong key) =>
        ulong.TryParse(text.StartsWith("0x", StringComparison.OrdinalIgnoreCase) ? text[2..] : text, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out key)
        && key != 0 && text.Length <= 18;
}

/// <summary>One CHAP credential of section "Iscsi:Credentials". <see cref="ToString"/> never shows the secret.</summary>
public sealed class IscsiCredentialSettings
{
    /// <summary>"host:port" (or just the host) the credential is for; empty for any portal.</summary>
    public string? Portal { get; set; }

    /// <summary>The target's IQN; empty for any target on the portal.</summary>
    public string? Target { get; set; }

    public string User { get; set; } = "";

    public string Secret { get; set; } = "";

    public override string ToString() => $"CHAP user {User} for {(string.IsNullOrEmpty(Target) ? "any target" : Target)} at {(string.IsNullOrEmpty(Portal) ? "any portal" : Portal)}";
}
