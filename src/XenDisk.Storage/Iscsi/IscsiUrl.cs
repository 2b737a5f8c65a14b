using System.Globalization;

namespace XenDisk.Storage.Iscsi;

/// <summary>
/// A LUN named as <c>iscsi://HOST[:PORT]/IQN/LUN</c> (the form QEMU and libiscsi's tools accept, without
/// their user%password@ part: credentials come only from the service configuration, so a URL that carries
/// them is refused rather than used). HOST is a name, an IPv4 address or a bracketed IPv6 address; PORT
/// defaults to 3260 (RFC 7143 section 13.3); IQN is the target's iSCSI name (iqn., eui. or naa.,
/// RFC 3720 section 3.2.6); LUN is 0 to 16383 (the flat LUN addressing libiscsi uses).
/// Every refusal is a <see cref="StorageException"/> whose message names the part that is wrong.
/// </summary>
public sealed record IscsiUrl
{
    /// <summary>The scheme prefix, lower case, as it must be written.</summary>
    public const string Scheme = "iscsi://";

    /// <summary>The IANA-assigned iSCSI port.</summary>
    public const int DefaultPort = 3260;

    /// <summary>Highest LUN of flat (single-level) addressing, SAM-5 4.7.</summary>
    public const int MaxLun = 16383;

    public required string Host { get; init; }

    public int Port { get; init; } = DefaultPort;

    public required string TargetName { get; init; }

    public required int Lun { get; init; }

    /// <summary>The portal as libiscsi takes it: "host:port", "[v6]:port".</summary>
    public string Portal => (Host.Contains(':', StringComparison.Ordinal) ? $"[{Host}]" : Host) + ":" + Port.ToString(CultureInfo.InvariantCulture);

    /// <summary>The canonical URL (the default port written out).</summary>
    public override string ToString() => $"{Scheme}{Portal}/{TargetName}/{Lun.ToString(CultureInfo.InvariantCulture)}";

    /// <summary>True when <paramref name="text"/> is meant as an iSCSI URL (it starts with the scheme), valid or not.</summary>
    public static bool IsIscsi(string? text) => text != null && text.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase);

    /// <summary>Parses <paramref name="text"/>; throws <see cref="StorageException"/> naming the bad part.</summary>
    public static IscsiUrl Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (!text.StartsWith(Scheme, StringComparison.Ordinal))
        {
            throw Refuse(text, text.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase)
                ? "the scheme must be written iscsi:// in lower case"
                : "it does not start with iscsi://");
        }
        if (text.AsSpan().ContainsAnyInRange('\0', ' ') || text.Contains('\u007f', StringComparison.Ordinal))
        {
            throw Refuse(text, "it contains spaces or control characters");
        }
        string rest = text[Scheme.Length..];
        if (rest.Contains('?', StringComparison.Ordinal) || rest.Contains('#', StringComparison.Ordinal))
        {
            throw Refuse(text, "query strings and fragments are not accepted (options such as header digests and credentials belong in the service configuration)");
        }
        if (rest.Contains(',', StringComparison.Ordinal))
        {
            throw Refuse(text, "a comma is not allowed (it separates the parts of a disk target)");
        }
        int slash = rest.IndexOf('/');
        string authority = slash < 0 ? rest : rest[..slash];
        if (authority.Contains('@', StringComparison.Ordinal))
        {
            throw Refuse(text, "credentials in the URL are not accepted; configure CHAP in the service configuration's Iscsi section");
        }
        (string host, int port) = ParseAuthority(text, authority);
        if (slash < 0)
        {
            throw Refuse(text, "the target name and LUN are missing (iscsi://HOST[:PORT]/IQN/LUN)");
        }
        string[] path = rest[(slash + 1)..].Split('/');
        if (path.Length != 2)
        {
            throw Refuse(text, path.Length < 2
                ? "the LUN is missing (iscsi://HOST[:PORT]/IQN/LUN)"
                : "there is more after the LUN (iscsi://HOST[:PORT]/IQN/LUN)");
        }
        string iqn = path[0];
        if (iqn.Length == 0)
        {
            throw Refuse(text, "the target name is empty");
        }
        if (!(iqn.StartsWith("iqn.", StringComparison.OrdinalIgnoreCase) || iqn.StartsWith("eui.", StringComparison.OrdinalIgnoreCase) || iqn.StartsWith("naa.", StringComparison.OrdinalIgnoreCase))
            || iqn.Length > 223 || !iqn.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '-' or ':'))
        {
            throw Refuse(text, $"the target name \"{iqn}\" is not an iSCSI name (iqn.YYYY-MM.domain[:name], eui. or naa.; letters, digits, '.', '-' and ':', at most 223 characters)");
        }
        string lunText = path[1];
        if (!int.TryParse(lunText, NumberStyles.None, CultureInfo.InvariantCulture, out int lun) || lun > MaxLun)
        {
            throw Refuse(text, $"the LUN \"{lunText}\" is not a number from 0 to {MaxLun}");
        }
        return new IscsiUrl { Host = host, Port = port, TargetName = iqn, Lun = lun };
    }

    private static (string Host, int Port) ParseAuthority(string text, string authority)
    {
        if (authority.Length == 0)
        {
            throw Refuse(text, "the host is empty");
        }
        string host;
        string? portText = null;
        if (authority.StartsWith('['))
        {
            int close = authority.IndexOf(']');
            if (close < 0)
            {
                throw Refuse(text, "the IPv6 address has no closing ']'");
            }
            host = authority[1..close];
            if (!System.Net.IPAddress.TryParse(host, out System.Net.IPAddress? address) || address.AddressFamily != System.Net.Sockets.AddressFamily.InterNetworkV6)
            {
                throw Refuse(text, $"the host \"[{host}]\" is not an IPv6 address");
            }
            string after = authority[(close + 1)..];
            if (after.Length > 0)
            {
                if (after[0] != ':')
                {
                    throw Refuse(text, $"\"{after}\" after the IPv6 address is not :PORT");
                }
                portText = after[1..];
            }
        }
        else
        {
            int colon = authority.IndexOf(':');
            host = colon < 0 ? authority : authority[..colon];
            portText = colon < 0 ? null : authority[(colon + 1)..];
            if (host.Length == 0)
            {
                throw Refuse(text, "the host is empty");
            }
            if (host.Length > 253 || !host.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '-'))
            {
                throw Refuse(text, $"the host \"{host}\" is not a host name or address");
            }
        }
        int port = DefaultPort;
        if (portText != null && (!int.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out port) || port is < 1 or > 65535))
        {
            throw Refuse(text, $"the port \"{portText}\" is not a number from 1 to 65535");
        }
        return (host, port);
    }

    private static StorageException Refuse(string text, string reason) => new($"iSCSI URL \"{Redact(text)}\": {reason}.", errno: 22);

    /// <summary>The text with anything between the scheme and an '@' hidden: a URL that carries a password must not print it.</summary>
    public static string Redact(string text)
    {
        int at = text.IndexOf('@');
        int start = text.IndexOf("//", StringComparison.Ordinal);
        return at < 0 || start < 0 || at < start ? text : text[..(start + 2)] + "***" + text[at..];
    }
}
