using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;

namespace XenDisk.Backend.DataPlane;

/// <summary>
/// The in-flight record of one ring, in a file that outlives the process (under /run/xendisk, which
/// systemd keeps across restarts): the private ring indices and, per request context, the private
/// copy of every request consumed and not yet answered. A backend that was killed leaves it behind;
/// the next instance that attaches to the same connection redoes exactly the requests that were in
/// flight, answers each once, and publishes responses its predecessor wrote but did not publish.
/// The model is vhost-user's inflight I/O tracking (docs/interop/vhost-user.rst, "Inflight I/O
/// tracking"): plain stores into shared memory on the hot path, no system call per request.
/// <para>
/// Layout (little endian): a 64-byte header (magic, version, entry count, slot size, the connection's
/// identity hash, req_cons, rsp_prod_pvt), then one entry per context: a 64-bit state word and the
/// request's slot bytes. The state word is written last when a request is recorded and first when it
/// is answered, each as one aligned 64-bit store, so a record torn by a kill mid-update is still read
/// consistently:
/// <list type="bullet">
/// <item>consume: slot bytes and the index it was consumed at, then state = IN_FLIGHT, then req_cons;</item>
/// <item>answer: the response is written to the shared ring at index R, then state = ANSWERED(R),
/// then rsp_prod_pvt = R + 1, then state = FREE.</item>
/// </list>
/// Recovery takes req_cons past every IN_FLIGHT entry and rsp_prod_pvt past every ANSWERED(R) entry, so
/// a kill between any two stores neither loses a response nor answers a request twice.
/// </para>
/// Ownership: the ring thread alone writes it; the ring disposes it (and deletes the file after a clean stop).
/// </summary>
internal sealed unsafe class InflightRecord : IDisposable
{
    public const ulong Magic = 0x31304C464E494458; // "XDINFL01"
    private const int HeaderSize = 64;
    private const int EntryHeaderSize = 16;

    private const ulong StateFree = 0;
    private const ulong StateInFlight = 1;
    private const ulong StateAnswered = 2;

    // Header field offsets.
    private const int MagicOffset = 0;
    private const int EntriesOffset = 8;
    private const int SlotSizeOffset = 12;
    private const int IdentityOffset = 16;
    private const int RequestConsumerOffset = 24;
    private const int ResponseProducerOffset = 28;

    private readonly MemoryMappedFile _file;
    private readonly MemoryMappedViewAccessor _view;
    private readonly byte* _base;
    private readonly int _entrySize;

    private InflightRecord(string path, MemoryMappedFile file, MemoryMappedViewAccessor view, int entries, int slotSize)
    {
        Path = path;
        _file = file;
        _view = view;
        byte* pointer = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref pointer);
        _base = pointer + view.PointerOffset;
        Entries = entries;
        SlotSize = slotSize;
        _entrySize = EntryHeaderSize + ((slotSize + 15) & ~15);
    }

    public string Path { get; }

    /// <summary>Tests only: called between the stores of an update (see BlkifRing.KillPoint).</summary>
    internal Action<string>? KillPoint { get; set; }

    public int Entries { get; }

    public int SlotSize { get; }

    /// <summary>What a previous instance left for this connection, read when the record was opened.</summary>
    public sealed record Recovery(uint RequestConsumer, uint ResponseProducer, IReadOnlyList<(int Entry, uint ConsumedAt)> InFlight);

    public static long FileSize(int entries, int slotSize) => HeaderSize + ((long)entries * (EntryHeaderSize + ((slotSize + 15) & ~15)));

    /// <summary>
    /// Opens (creating if needed) the record at <paramref name="path"/>. <paramref name="recovery"/> is
    /// what a previous instance of the same connection left, or null when there is none (no file, or a
    /// fresh one); <paramref name="discarded"/> says why an existing record was not used (another
    /// connection's, or damaged): it is then reset.
    /// </summary>
    public static InflightRecord Open(string path, int entries, int slotSize, ulong identity, out Recovery? recovery, out string? discarded)
    {
        recovery = null;
        discarded = null;
        long size = FileSize(entries, slotSize);
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(path)!);
        using (FileStream stream = new(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None))
        {
            if (stream.Length != size)
            {
                if (stream.Length != 0)
                {
                    discarded = $"its size ({stream.Length} bytes) does not fit a ring of {entries} slots";
                }

                stream.SetLength(0);
                stream.SetLength(size);
            }
        }

        MemoryMappedFile file = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, size, MemoryMappedFileAccess.ReadWrite);
        MemoryMappedViewAccessor view = file.CreateViewAccessor(0, size, MemoryMappedFileAccess.ReadWrite);
        var record = new InflightRecord(path, file, view, entries, slotSize);
        if (discarded is null)
        {
            recovery = record.TryRecover(identity, out discarded);
        }

        if (recovery is null)
        {
            record.Reset(identity);
        }

        return record;
    }

    /// <summary>The request bytes recorded for <paramref name="entry"/>.</summary>
    public ReadOnlySpan<byte> Slot(int entry) => new(EntryAddress(entry) + EntryHeaderSize, SlotSize);

    /// <summary>Hot path: the request copied into <paramref name="slot"/> was consumed at <paramref name="index"/> into context <paramref name="entry"/>.</summary>
    public void Consumed(int entry, ReadOnlySpan<byte> slot, uint index)
    {
        byte* address = EntryAddress(entry);
        slot.CopyTo(new Span<byte>(address + EntryHeaderSize, SlotSize));
        KillPoint?.Invoke("record: slot copied");
        Volatile.Write(ref *(ulong*)address, StateInFlight | ((ulong)index << 32));
        KillPoint?.Invoke("record: in flight");
        Volatile.Write(ref *(uint*)(_base + RequestConsumerOffset), index + 1);
    }

    /// <summary>Hot path: context <paramref name="entry"/>'s response was written to the shared ring at <paramref name="responseIndex"/>.</summary>
    public void Answered(int entry, uint responseIndex)
    {
        ulong* state = (ulong*)EntryAddress(entry);
        Volatile.Write(ref *state, StateAnswered | ((ulong)responseIndex << 32));
        KillPoint?.Invoke("record: answered");
        Volatile.Write(ref *(uint*)(_base + ResponseProducerOffset), responseIndex + 1);
        KillPoint?.Invoke("record: rsp_prod_pvt");
        Volatile.Write(ref *state, StateFree);
    }

    /// <summary>Removes the file: after a clean stop nothing is in flight and the shared ring says everything.</summary>
    public void Delete()
    {
        try
        {
            File.Delete(Path);
        }
        catch (IOException)
        {
            // A record that cannot be removed is harmless: it says nothing is in flight.
        }
    }

    public void Dispose()
    {
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _file.Dispose();
    }

    private byte* EntryAddress(int entry) => _base + HeaderSize + ((long)entry * _entrySize);

    /// <summary>Starts the record afresh for <paramref name="identity"/>: nothing in flight.</summary>
    public void Reset(ulong identity)
    {
        new Span<byte>(_base, (int)Math.Min(int.MaxValue, FileSize(Entries, SlotSize))).Clear();
        Span<byte> header = new(_base, HeaderSize);
        BinaryPrimitives.WriteInt32LittleEndian(header[EntriesOffset..], Entries);
        BinaryPrimitives.WriteInt32LittleEndian(header[SlotSizeOffset..], SlotSize);
        BinaryPrimitives.WriteUInt64LittleEndian(header[IdentityOffset..], identity);
        Volatile.Write(ref *(ulong*)(_base + MagicOffset), Magic);
    }

    /// <summary>Validates the record as untrusted input (it may be torn or from another connection) and reads what it says.</summary>
    private Recovery? TryRecover(ulong identity, out string? discarded)
    {
        ReadOnlySpan<byte> header = new(_base, HeaderSize);
        if (BinaryPrimitives.ReadUInt64LittleEndian(header[MagicOffset..]) != Magic)
        {
            discarded = null; // a new file: nothing was there
            return null;
        }

        if (BinaryPrimitives.ReadInt32LittleEndian(header[EntriesOffset..]) != Entries || BinaryPrimitives.ReadInt32LittleEndian(header[SlotSizeOffset..]) != SlotSize)
        {
            discarded = "it was written for a ring of another size or protocol";
            return null;
        }

        if (BinaryPrimitives.ReadUInt64LittleEndian(header[IdentityOffset..]) != identity)
        {
            discarded = "it belongs to an earlier connection (the frontend has reconnected since)";
            return null;
        }

        uint requestConsumer = BinaryPrimitives.ReadUInt32LittleEndian(header[RequestConsumerOffset..]);
        uint responseProducer = BinaryPrimitives.ReadUInt32LittleEndian(header[ResponseProducerOffset..]);
        var inFlight = new List<(int, uint)>();
        for (int entry = 0; entry < Entries; entry++)
        {
            ulong word = *(ulong*)EntryAddress(entry);
            ulong state = word & 0xFFFF_FFFF;
            uint index = (uint)(word >> 32);
            if (state == StateInFlight)
            {
                inFlight.Add((entry, index));

                // Killed between the entry's state and req_cons: the entry is the newer word.
                if (index == requestConsumer)
                {
                    requestConsumer = index + 1;
                }
            }
            else if (state == StateAnswered)
            {
                // Killed between ANSWERED(R) and rsp_prod_pvt: the response at R was written. An older
                // ANSWERED entry (killed before its FREE) is already covered by rsp_prod_pvt.
                if (index == responseProducer)
                {
                    responseProducer = index + 1;
                }
            }
            else if (state != StateFree)
            {
                discarded = $"entry {entry} has an impossible state {state}";
                return null;
            }
        }

        // Every request in flight lies between the response and request indices, and no more than
        // the ring's size can be outstanding.
        uint outstanding = requestConsumer - responseProducer;
        if (outstanding > (uint)Entries || inFlight.Count > outstanding
            || inFlight.Exists(e => e.Item2 - responseProducer >= outstanding))
        {
            discarded = $"its indices are inconsistent (req_cons {requestConsumer}, rsp_prod {responseProducer}, {inFlight.Count} in flight)";
            return null;
        }

        inFlight.Sort((a, b) => (a.Item2 - responseProducer).CompareTo(b.Item2 - responseProducer));
        discarded = null;
        return new Recovery(requestConsumer, responseProducer, inFlight);
    }

    /// <summary>FNV-1a of the connection's identity (domain, device, queue, ring refs, port, protocol).</summary>
    public static ulong HashIdentity(string identity)
    {
        ulong hash = 14695981039346656037UL;
        foreach (byte b in MemoryMarshal.AsBytes(identity.AsSpan()))
        {
            hash = (hash ^ b) * 1099511628211UL;
        }

        return hash == 0 ? 1 : hash;
    }
}
