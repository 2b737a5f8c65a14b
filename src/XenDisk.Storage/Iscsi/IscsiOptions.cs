namespace XenDisk.Storage.Iscsi;

/// <summary>
/// CHAP credentials for one portal or target (RFC 7143 section 12.1.3). They come only from the service
/// configuration. <see cref="ToString"/> names the user and never the secret, so a credential that ends up
/// in a log line, a status record or an exception message cannot leak it.
/// </summary>
public sealed class IscsiChap
{
    public IscsiChap(string user, string secret)
    {
        ArgumentException.ThrowIfNullOrEmpty(user);
        ArgumentException.ThrowIfNullOrEmpty(secret);
        User = user;
        Secret = secret;
    }

    public string User { get; }

    /// <summary>The CHAP secret: passed to libiscsi and nowhere else.</summary>
    internal string Secret { get; }

    public override string ToString() => $"CHAP user {User}";
}

/// <summary>How iSCSI LUNs are reached: the initiator's name, credentials, queue depth and time limits.</summary>
public sealed record IscsiOptions
{
    /// <summary>Used when the configuration names no initiator (RFC 3720 iqn. form, this project's own domain).</summary>
    public const string DefaultInitiatorName = "iqn.2026-12.org.xendisk:initiator";

    /// <summary>
    /// Commands one session keeps in flight. 128 covers a multi-queue ring's I/O threads with room for
    /// the target to reorder; tgtd accepts 128 outstanding commands per session by default (MaxCmdSN window).
    /// </summary>
    public const int DefaultQueueDepth = 128;

    /// <summary>The initiator's iSCSI name, which target ACLs match.</summary>
    public string InitiatorName { get; init; } = DefaultInitiatorName;

    /// <summary>
    /// CHAP credentials for a LUN (looked up by portal and target), or null for none. Supplied by the
    /// service configuration; never derived from a URL or a disk line.
    /// </summary>
    public Func<IscsiUrl, IscsiChap?> Credentials { get; init; } = static _ => null;

    /// <summary>Ask for CRC32C header digests (the target may still refuse them).</summary>
    public bool HeaderDigest { get; init; }

    public int QueueDepth { get; init; } = DefaultQueueDepth;

    /// <summary>
    /// How long one command may take, reconnects included, before it fails with an I/O error: a lost
    /// target never hangs a guest's request, and 30 s outlasts a target restart or a path failover
    /// (the Linux SCSI layer's default command timeout is 30 s too).
    /// </summary>
    public TimeSpan CommandTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// This host's SCSI-3 persistent reservation key (SPC-4 5.13), 0 for none. An overlay on a LUN is
    /// reserved under it while it is served, so a second host cannot write it.
    /// </summary>
    public ulong ReservationKey { get; init; }

    /// <summary>How long the login may take when a device is opened (TCP connect, login, LUN check).</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(15);

    internal void Validate()
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(InitiatorName);
        ArgumentNullException.ThrowIfNull(Credentials);
        ArgumentOutOfRangeException.ThrowIfLessThan(QueueDepth, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(QueueDepth, 1024);
        ArgumentOutOfRangeException.ThrowIfLessThan(CommandTimeout, TimeSpan.FromSeconds(1));
        ArgumentOutOfRangeException.ThrowIfLessThan(ConnectTimeout, TimeSpan.FromSeconds(1));
    }
}
