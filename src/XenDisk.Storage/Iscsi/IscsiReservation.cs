using System.Buffers.Binary;
using System.Globalization;
using XenDisk.Storage.Iscsi.Interop;

namespace XenDisk.Storage.Iscsi;

/// <summary>A LUN's persistent reservation as PERSISTENT RESERVE IN / READ RESERVATION reports it (SPC-4 6.15.3).</summary>
public readonly record struct IscsiReservationHolder(ulong Key, int Type)
{
    public override string ToString() => $"host key 0x{Key.ToString("x16", CultureInfo.InvariantCulture)}";
}

/// <summary>
/// SCSI-3 persistent reservations (SPC-4 5.13) that keep two hosts from writing one LUN. The host that
/// opens a LUN for writing registers its key (one per host, from the configuration) and reserves the
/// LUN as WRITE EXCLUSIVE – REGISTRANTS ONLY (type 5); it releases and unregisters on a clean close.
/// <para>
/// Why type 5 and not WRITE EXCLUSIVE (type 1): with type 1 only the one I_T nexus that reserved may
/// write, and libiscsi's reconnect logs in with a new ISID, that is a new I_T nexus, so the first write
/// after a reconnect would meet RESERVATION CONFLICT from its own reservation. With type 5 every
/// registered nexus may write, so the reconnected session registers the host's key again and goes on.
/// Other hosts are kept out by the protocol: a host registers only when the LUN is unreserved or
/// reserved under its own key, and writes only once its RESERVE succeeded; when two race, the loser's
/// RESERVE conflicts and it unregisters without writing. Reads stay open to everyone (SPC-4 table 48).
/// </para>
/// </summary>
internal static unsafe class IscsiReservation
{
    /// <summary>SPC-4 6.16.2: WRITE EXCLUSIVE – REGISTRANTS ONLY.</summary>
    internal const int Type = 5;

    private const int ReadReservation = 1;
    private const int Register = 0;
    private const int Reserve = 1;
    private const int Release = 2;
    private const int Preempt = 4;
    private const int RegisterAndIgnoreExistingKey = 6;

    /// <summary>
    /// Takes the LUN for <paramref name="key"/>: refuses (naming the holder) when another key holds it.
    /// </summary>
    public static void Acquire(IscsiSession session, ulong key)
    {
        IscsiReservationHolder? holder = ReadHolder(session);
        if (holder is { } held && held.Key != key)
        {
            throw Conflict(session.Url, held);
        }
        Out(session, RegisterAndIgnoreExistingKey, 0, 0, key, "REGISTER AND IGNORE EXISTING KEY");
        if (holder is { Key: var k } && k == key)
        {
            // Ours already (a restart of this host): registering this nexus is all it takes under type 5.
            return;
        }
        ScsiOutcome outcome = OutCommand(session, Reserve, key, 0);
        if (!outcome.Good)
        {
            // Another host reserved it between our look and our RESERVE: step back without writing.
            OutCommand(session, Register, key, 0);
            IscsiReservationHolder? winner = ReadHolder(session);
            throw winner is { } w && w.Key != key
                ? Conflict(session.Url, w)
                : new StorageException($"{session.Url}: PERSISTENT RESERVE OUT (RESERVE) failed: {outcome.Describe()}.");
        }
    }

    /// <summary>After a reconnect (the session's loop runs it, holding other commands): registers this new nexus again if the reservation is still ours, or takes it again if the target lost it (a restart).</summary>
    public static bool Reassert(IscsiSession session, ulong key)
    {
        try
        {
            IscsiReservationHolder? holder = ReadHolder(session);
            if (holder is { } held && held.Key != key)
            {
                return false;
            }
            Out(session, RegisterAndIgnoreExistingKey, 0, 0, key, "REGISTER AND IGNORE EXISTING KEY");
            return holder != null || OutCommand(session, Reserve, key, 0).Good;
        }
        catch (StorageException)
        {
            return false;
        }
    }

    /// <summary>
    /// A further connection of the host that holds the LUN (a ring's own queue): registers its I_T nexus
    /// under the host's key, which under type 5 is all a nexus needs to write. It never reserves, so the
    /// reservation stays with the device's own session and closing this connection never releases it.
    /// </summary>
    public static void RegisterNexus(IscsiSession session, ulong key) =>
        Out(session, RegisterAndIgnoreExistingKey, 0, 0, key, "REGISTER AND IGNORE EXISTING KEY");

    /// <summary>Removes a further connection's registration when it closes (it never holds the reservation, <see cref="RegisterNexus"/>).</summary>
    public static void UnregisterNexusQuietly(IscsiSession session, ulong key) => OutCommand(session, Register, key, 0);

    /// <summary>
    /// After a further connection reconnected (a new nexus, unregistered; after a target restart the
    /// reservation is gone too): the owner takes the reservation again, then this nexus registers. The
    /// owner's own connection may be reconnecting at the same moment, so a failed attempt is repeated
    /// every 100 ms until <paramref name="timeoutTicks"/> have passed; another host's reservation is final.
    /// </summary>
    public static bool ReassertNexus(IscsiSession owner, IscsiSession nexus, ulong key, long timeoutTicks)
    {
        long deadline = System.Diagnostics.Stopwatch.GetTimestamp() + timeoutTicks;
        while (true)
        {
            try
            {
                IscsiReservationHolder? holder = ReadHolder(owner);
                if (holder is { } held && held.Key != key)
                {
                    return false;
                }
                if (Reassert(owner, key))
                {
                    RegisterNexus(nexus, key);
                    return true;
                }
            }
            catch (StorageException)
            {
                // The owner or this nexus could not be asked yet (a reconnect in progress): again below.
            }
            if (System.Diagnostics.Stopwatch.GetTimestamp() >= deadline)
            {
                return false;
            }
            Thread.Sleep(100);
        }
    }

    /// <summary>Releases the reservation and removes the key's registration (a clean stop); failures are left to the target's state.</summary>
    public static void ReleaseQuietly(IscsiSession session, ulong key)
    {
        OutCommand(session, Release, key, 0);
        OutCommand(session, Register, key, 0);
    }

    /// <summary>
    /// Breaks another host's reservation (an operator's explicit act, for a host that died holding it):
    /// registers <paramref name="key"/>, PREEMPTs the holder's key (which removes its registrations and
    /// hands the reservation over), then releases and unregisters. Returns the holder it broke, or null.
    /// </summary>
    public static IscsiReservationHolder? Break(IscsiSession session, ulong key)
    {
        IscsiReservationHolder? holder = ReadHolder(session);
        if (holder is not { } held)
        {
            return null;
        }
        Out(session, RegisterAndIgnoreExistingKey, 0, 0, key, "REGISTER AND IGNORE EXISTING KEY");
        if (held.Key != key)
        {
            Out(session, Preempt, key, held.Key, 0, "PREEMPT");
        }
        ReleaseQuietly(session, key);
        return held;
    }

    /// <summary>The reservation holder, or null when the LUN is not reserved.</summary>
    public static IscsiReservationHolder? ReadHolder(IscsiSession session)
    {
        IscsiCommand command = session.RentControl();
        try
        {
            command.Operation = IscsiOperation.PersistentReserveIn;
            command.Code = ReadReservation;
            ScsiOutcome outcome = session.Execute(command);
            if (!outcome.Good)
            {
                throw new StorageException($"{session.Url}: PERSISTENT RESERVE IN (READ RESERVATION) failed: {outcome.Describe()}; the target must support SCSI-3 persistent reservations.");
            }
            return ParseReservation(command.ControlData.AsSpan(0, command.ControlDataLength));
        }
        finally
        {
            session.Return(command);
        }
    }

    /// <summary>READ RESERVATION parameter data: generation, additional length, then (when reserved) the key and, at byte 21, scope and type.</summary>
    internal static IscsiReservationHolder? ParseReservation(ReadOnlySpan<byte> data)
    {
        if (data.Length < 8 || BinaryPrimitives.ReadUInt32BigEndian(data[4..]) < 16 || data.Length < 22)
        {
            return null;
        }
        return new IscsiReservationHolder(BinaryPrimitives.ReadUInt64BigEndian(data[8..]), data[21] & 0x0f);
    }

    private static StorageException Conflict(IscsiUrl url, IscsiReservationHolder holder) => new(
        $"{url} is reserved by another host ({holder}): an overlay or disk is written by one host at a time. Stop it there first; if that host is dead, break the reservation with 'xendisk image unlock --force {url}'.",
        errno: 16);

    private static void Out(IscsiSession session, int action, ulong key, ulong serviceKey, ulong registerKey, string what)
    {
        ScsiOutcome outcome = OutCommand(session, action, action == RegisterAndIgnoreExistingKey ? 0 : key, action == RegisterAndIgnoreExistingKey ? registerKey : serviceKey);
        if (!outcome.Good)
        {
            throw new StorageException($"{session.Url}: PERSISTENT RESERVE OUT ({what}) failed: {outcome.Describe()}.");
        }
    }

    private static ScsiOutcome OutCommand(IscsiSession session, int action, ulong key, ulong serviceKey)
    {
        IscsiCommand command = session.RentControl();
        try
        {
            command.Operation = IscsiOperation.PersistentReserveOut;
            command.Code = action;
            command.Type = action is Reserve or Release or Preempt ? Type : 0;
            *command.ReserveOut = new PersistentReserveOutBasic { reservation_key = key, service_action_reservation_key = serviceKey };
            return session.Execute(command);
        }
        finally
        {
            session.Return(command);
        }
    }
}
